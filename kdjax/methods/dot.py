"""DOT: Zhao, Cui, Song & Liang (ICCV 2023), "DOT: A Distillation-Oriented Trainer".

An optimizer, not a loss. The task loss (CE) and the distillation loss of another
method (`config.dot.distiller`: `kd` or `dkd`, each with its own config node) get
their own gradient and their own momentum buffer, the distillation's heavier than the
task's, so that where the two gradients disagree the accumulated distillation
direction wins. For a parameter p with task gradient g_t, distillation gradient g_d,
momentum beta, DOT's delta, weight decay wd (added to the task gradient only) and the
run's learning rate lr:

    b_t <- (beta - delta) * b_t + (g_t + wd * p)
    b_d <- (beta + delta) * b_d + g_d
    p   <- p - lr * b_t - lr * b_d

as mdistiller's `engine/dot.py` computes it (docs/methods.md §1.4; its buffers start as a
copy of the first gradient, which without dampening equals starting them at zero). The
two terms are the distiller's `split_loss` (CE weighted as that method weights it, and
its distillation term with its warmup); the step takes their gradients from one forward
pass (`grad_groups=2`). Every student parameter receives both gradients (the
distillation term reaches all of them through the logits), so the release's averaged
momentum for a parameter reached by one loss only never applies.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from kdjax import torch_optim
from kdjax.errors import UserError
from kdjax.methods import base, registry

PyTree = Any


class DotState(NamedTuple):
  """The two momentum buffers and the step count the LR schedule reads."""
  task: PyTree
  distill: PyTree
  count: jax.Array


def dot_sgd(learning_rate: torch_optim.LearningRate, momentum: float, delta: float,
            weight_decay: float) -> optax.GradientTransformation:
  """DOT's SGD: `update` takes `(task gradients, distillation gradients)` and returns the step."""
  m_task, m_distill = momentum - delta, momentum + delta

  def init(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return DotState(zeros(), zeros(), jnp.zeros((), jnp.int32))

  def update(grads, state, params):
    g_task, g_distill = grads
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    b_task = jax.tree.map(lambda b, g, p: m_task * b + (g + weight_decay * p), state.task, g_task, params)
    b_distill = jax.tree.map(lambda b, g: m_distill * b + g, state.distill, g_distill)
    updates = jax.tree.map(lambda t, d: -lr * t - lr * d, b_task, b_distill)
    return updates, DotState(b_task, b_distill, state.count + 1)

  return optax.GradientTransformation(init, update)


@registry.register("dot", defaults=dict(distiller="kd", delta=0.075))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """DOT over `cfg.dot.distiller`'s loss, momenta `cfg.optim.momentum` -/+ `cfg.dot.delta`."""
  name, delta, momentum = str(cfg.dot.distiller), float(cfg.dot.delta), float(cfg.optim.momentum)
  if name == "dot":
    raise UserError("config.dot.distiller='dot': name the method whose loss DOT optimises, e.g. 'kd'.")
  inner = registry.get(name, cfg)
  if inner.split_loss is None or inner.extra_updates or inner.prestage is not None:
    raise UserError(f"config.dot.distiller={name!r}: DOT needs a one-pass method whose loss is CE + a "
                    "distillation term (kd, dkd).")
  if not 0.0 <= delta <= momentum or momentum + delta >= 1.0:
    raise UserError(f"config.dot.delta={delta}: DOT's momenta (task {momentum - delta:g}, distillation "
                    f"{momentum + delta:g}) must lie in [0, 1) with the distillation one the larger; with "
                    f"config.optim.momentum={momentum} choose delta in [0, {min(momentum, 1.0 - momentum):g}).")
  if cfg.optim.nesterov:
    raise UserError("DOT is plain SGD momentum (mdistiller's); set config.optim.nesterov=False.")

  def optimizer(steps_per_epoch: int):
    o = cfg.optim
    lr_fn = torch_optim.step_schedule(o.lr, o.lr_milestones, o.lr_decay, steps_per_epoch)
    return dot_sgd(lr_fn, momentum, delta, float(o.weight_decay)), lr_fn

  return dataclasses.replace(inner, name="dot", loss=inner.split_loss, split_loss=None, grad_groups=2,
                             optimizer=optimizer)
