"""Optimizers: the LR schedule, PyTorch-equivalent SGD, per-pass parameter masks.

The PyTorch-equivalent transformations themselves live in `kdjax/torch_optim.py`,
shared with the methods that bring their own optimizer (AFD's Adam, a prestage's
constant-LR SGD); the trainer masks each pass's transformation to the parameters
that pass moves.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import ml_collections
import optax

from kdjax import torch_optim
from kdjax.methods import base as methods_base

PyTree = Any


def create_learning_rate_fn(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """Step-wise LR: `optim.lr`, times `lr_decay` from each 0-indexed milestone epoch on."""
  return torch_optim.step_schedule(config.optim.lr, config.optim.lr_milestones, config.optim.lr_decay,
                                   steps_per_epoch)


def create_optimizer(config: ml_collections.ConfigDict, lr_fn: optax.Schedule) -> optax.GradientTransformation:
  """PyTorch SGD: coupled L2 on every parameter, then momentum (no dampening), then -lr."""
  return torch_optim.sgd(lr_fn, config.optim.momentum, config.optim.weight_decay, config.optim.nesterov)


def path_names(path) -> tuple[str, ...]:
  """A pytree key path as a tuple of names, e.g. ('student', 'layer1', '0', 'conv1', 'kernel')."""
  return tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def masked(tx: optax.GradientTransformation, trains) -> optax.GradientTransformation:
  """`tx` on the parameters `trains(path)` accepts; the others get no update at all."""
  if trains is methods_base.trains_all:
    return tx

  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "on" if trains(path_names(path)) else "off", params)

  return optax.multi_transform({"on": tx, "off": optax.set_to_zero()}, labels)


def create_optimizers(config: ml_collections.ConfigDict, method: methods_base.Method,
                      steps_per_epoch: int) -> tuple[tuple[optax.GradientTransformation, ...], optax.Schedule]:
  """One masked optimizer per pass of the step (the method's main loss, then its extra updates),
  and the main pass's LR schedule (what the run logs as `lr`)."""
  lr_fn = create_learning_rate_fn(config, steps_per_epoch)
  run_tx = create_optimizer(config, lr_fn)
  txs, schedules = [], []
  for k, update in enumerate(method.passes):
    made = update.optimizer(steps_per_epoch) if update.optimizer is not None else (run_tx, lr_fn)
    # A bare GradientTransformation is itself a pair (init, update): refuse it rather than unpack it.
    if isinstance(made, optax.GradientTransformation) or not isinstance(made, tuple) or len(made) != 2:
      raise TypeError(f"method {method.name!r}, pass {k}: `optimizer(steps_per_epoch)` must return "
                      f"(optax transformation, LR schedule), got {type(made).__name__}")
    tx, schedule = made
    if update.grad_groups > 1 and (update.trains is not methods_base.trains_all or update.optimizer is None):
      # The masks and the run's SGD take one gradient tree; a tuple of them needs its own optimizer.
      raise TypeError(f"method {method.name!r}, pass {k}: {update.grad_groups} gradient groups need "
                      "the pass's own optimizer and no parameter mask")
    txs.append(masked(tx, update.trains))
    schedules.append(schedule)
  return tuple(txs), schedules[0]


def as_passes(txs: Sequence[optax.GradientTransformation]) -> tuple[optax.GradientTransformation, ...]:
  """`txs` (one transformation per pass) as a tuple; a bare transformation is refused."""
  # A GradientTransformation is itself a 2-tuple (init, update), so tuple() would split it.
  if isinstance(txs, optax.GradientTransformation) or not isinstance(txs, (list, tuple)):
    raise TypeError("pass one optimizer per pass as a tuple, e.g. (tx,) for a single-pass method")
  return tuple(txs)


def init_opt_state(txs: Sequence[optax.GradientTransformation], params: PyTree) -> PyTree:
  """Optimizer state for `params`: the single pass's own, or a tuple with one per pass.

  A single-pass method keeps its bare state (not a 1-tuple) so that checkpoints
  written before multi-pass methods existed still restore.
  """
  txs = as_passes(txs)
  return txs[0].init(params) if len(txs) == 1 else tuple(t.init(params) for t in txs)


def pass_opt_states(txs: Sequence[optax.GradientTransformation], opt_state: PyTree) -> tuple[PyTree, ...]:
  """The per-pass view of `opt_state` (the inverse of `init_opt_state`'s packing)."""
  return tuple(opt_state) if len(txs) > 1 else (opt_state,)


def pack_opt_states(states: Sequence[PyTree]) -> PyTree:
  """Packs per-pass optimizer states the way `init_opt_state` does."""
  return tuple(states) if len(states) > 1 else states[0]
