"""optax transformations equal to PyTorch's: SGD and Adam with coupled weight decay, MultiStepLR.

The one implementation the trainer (`kdjax/train/optim.py`) and the methods with
their own optimizers (AFD's Adam, the AB/FT/FSP prestage's constant-LR SGD) share.
PyTorch adds `weight_decay * param` to the gradient before momentum/Adam moments,
on every parameter the optimizer holds (docs/protocol.md §1.3).
"""
from __future__ import annotations

from typing import Sequence, Union

import optax

LearningRate = Union[float, optax.Schedule]


def step_schedule(lr: float, milestones: Sequence[int], decay: float, steps_per_epoch: int) -> optax.Schedule:
  """MultiStepLR: `lr`, times `decay` from each 0-indexed milestone epoch on (repeats compound)."""
  boundaries: dict[int, float] = {}
  for m in milestones:
    step = int(m) * steps_per_epoch
    boundaries[step] = boundaries.get(step, 1.0) * decay
  return optax.piecewise_constant_schedule(lr, boundaries)


def sgd(learning_rate: LearningRate, momentum: float, weight_decay: float,
        nesterov: bool = False) -> optax.GradientTransformation:
  """`torch.optim.SGD`: coupled L2, then momentum (no dampening; Nesterov optional), then -lr."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov))


def adam(learning_rate: LearningRate, b1: float, b2: float, eps: float,
         weight_decay: float) -> optax.GradientTransformation:
  """`torch.optim.Adam(weight_decay=...)`: coupled L2 added to the gradient, then Adam, then -lr."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                     optax.scale_by_learning_rate(learning_rate))
