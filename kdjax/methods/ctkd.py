"""CTKD: Li, Li, Yang, Cheng, Liu, Wang & Yang (AAAI 2023), "Curriculum Temperature for Knowledge Distillation".

KD whose temperature is a learnable parameter trained *against* the student: the
temperature module's output passes a gradient reversal layer (identity forward,
gradient times lambda backward) before

    T = t_start + t_range * sigmoid(grl(theta, lambda)),
    L = w_ce * CE(z_s, y) + w_kd * T^2 * mean_b KL(softmax(z_t/T) || softmax(z_s/T)).

lambda follows the release's cosine curriculum over the 1-based epoch e,
lambda(e) = lambda_min + (lambda_max - lambda_min) * (1 + cos(pi * min(e, n) / n)) / 2,
from ~lambda_max = 0 (no adversarial signal) to lambda_min = -1 after n = 10 epochs: a
negative lambda makes theta climb the KD loss while the student descends it, so the task
gets harder as training goes. theta (one value, initialised to 1) is a method parameter
updated by the run's SGD with the student (momentum and weight decay included, as the
release puts it in the same `optim.SGD`). docs/methods.md §1.3; the release's global
temperature (its instance-wise variant is not implemented).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections

from kdjax.errors import UserError
from kdjax.methods import base, registry
from kdjax.methods import kd as kd_lib


@jax.custom_vjp
def reverse_gradient(x: jax.Array, lam: jax.Array) -> jax.Array:
  """Identity forward; the backward pass multiplies the incoming gradient by `lam`."""
  return x


def _reverse_fwd(x, lam):
  return x, lam


def _reverse_bwd(lam, g):
  return lam * g, jnp.zeros_like(lam)


reverse_gradient.defvjp(_reverse_fwd, _reverse_bwd)


def curriculum(epoch: jax.Array, lambda_max: float, lambda_min: float, loops: float) -> jax.Array:
  """The release's cosine lambda at 0-based `epoch` (it counts epochs from 1), held after `loops`."""
  e = jnp.clip(jnp.asarray(epoch, dtype=float) + 1.0, 0.0, loops)  # float: f64 under x64 (tests)
  return lambda_min + (lambda_max - lambda_min) * 0.5 * (jnp.cos(e * math.pi / loops) + 1.0)


def temperature(theta: jax.Array, lam: jax.Array, t_start: float, t_range: float) -> jax.Array:
  """T = t_start + t_range * sigmoid(theta), with theta's gradient reversed (scaled by lam)."""
  return t_start + t_range * jax.nn.sigmoid(reverse_gradient(theta, lam))


@registry.register("ctkd", defaults=dict(ce_weight=0.1, kd_weight=0.9, t_start=1.0, t_range=20.0,
                                         init=1.0, lambda_max=0.0, lambda_min=-1.0, loops=10.0,
                                         logit_standardization=False))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """CTKD (global temperature) with `cfg.ctkd.*` (the release's CIFAR defaults)."""
  c = cfg.ctkd
  w_ce, w_kd = float(c.ce_weight), float(c.kd_weight)
  t_start, t_range, lam_max, lam_min = float(c.t_start), float(c.t_range), float(c.lambda_max), float(c.lambda_min)
  loops = float(c.loops)
  if loops <= 0:
    raise UserError(f"config.ctkd.loops={c.loops}: the curriculum needs at least one epoch.")
  prepare = base.logit_preprocess(bool(c.logit_standardization))

  def init(rng, student_out, teacher_out, data_info):
    del rng, student_out, teacher_out, data_info
    return {"theta": jnp.full((1,), float(c.init), jnp.float32)}, {}

  def loss(params, state, student_out, teacher_out, batch, progress):
    lam = curriculum(progress.epoch, lam_max, lam_min, loops)
    t = temperature(params["theta"], lam, t_start, t_range)[0]
    ce = base.cross_entropy(student_out[0], batch["label"])
    kd = kd_lib.kd_loss(prepare(student_out[0]), prepare(base.ensemble_logits(teacher_out)), t)
    return w_ce * ce + w_kd * kd, {"loss_ce": ce, "loss_kd": kd, "temperature": t, "lambda": lam}, state

  return base.Method(name="ctkd", needs_teacher=True, loss=loss, init=init)
