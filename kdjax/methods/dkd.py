"""DKD: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022, arXiv 2203.08679).

KD's KL splits into a target-class term and a non-target term,
KL(p_t || p_s) = TCKD + (1 - p_t^target) * NCKD; DKD weights them freely:

    L = w_ce * CE + min(epoch / warmup, 1) * T^2 * mean_b(alpha * TCKD + beta * NCKD)

with `epoch` counted from 1 as in mdistiller (first-epoch factor 1/20 on CIFAR).

Numerics: the reference code takes `log` of softmax probabilities and masks the
target class with -1000, which gives inf/NaN once a margin z/T exceeds ~100 and
mis-masks exploded logits (docs/methods.md §2.6). Here everything stays in log space:
the binary log-probabilities are log-sum-exps of logits, and NCKD gathers the
C-1 non-target logits instead of masking, so value and gradient stay finite for
any finite logits and temperature.

Logit standardization (`config.dkd.logit_standardization`, Sun et al., CVPR 2024): both
sides' logits are z-scored per sample before the temperature, as in KD+LS (kd.py).

Ensembles (`config.teachers`, `multi_teacher=True`): the teacher logits are the
teachers' mean logits (`base.ensemble_logits`), decoupled like one teacher's; with
one teacher they are its logits, so single-teacher DKD is unchanged.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from kdjax.errors import UserError
from kdjax.methods import base, registry


def other_classes(labels: jax.Array, num_classes: int) -> jax.Array:
  """(B, C-1) indices of each row's non-target classes, in class order."""
  r = jnp.arange(num_classes - 1)[None, :]
  # Index map r -> r + [r >= y] skips the target column and keeps class order.
  return r + (r >= labels[:, None]).astype(r.dtype)


def split_target(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(target logit (B,), non-target logits (B, C-1)) by gathering, not masking."""
  target = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  return target, jnp.take_along_axis(logits, other_classes(labels, logits.shape[-1]), axis=-1)


def _decoupled_kl(s: jax.Array, u: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-sample (TCKD, NCKD) for scaled student logits `s` and teacher logits `u`."""
  s_t, s_n = split_target(s, labels)
  u_t, u_n = split_target(u, labels)
  # log b = [log p_target, log p_nontarget], each a log-sum-exp difference.
  s_lse_n, u_lse_n = jax.nn.logsumexp(s_n, axis=-1), jax.nn.logsumexp(u_n, axis=-1)
  s_lz, u_lz = jnp.logaddexp(s_t, s_lse_n), jnp.logaddexp(u_t, u_lse_n)
  log_bs = jnp.stack([s_t - s_lz, s_lse_n - s_lz], axis=-1)
  log_bu = jnp.stack([u_t - u_lz, u_lse_n - u_lz], axis=-1)
  tckd = jnp.sum(jnp.exp(log_bu) * (log_bu - log_bs), axis=-1)
  log_ps_n = jax.nn.log_softmax(s_n, axis=-1)
  log_pu_n = jax.nn.log_softmax(u_n, axis=-1)
  nckd = jnp.sum(jnp.exp(log_pu_n) * (log_pu_n - log_ps_n), axis=-1)
  return tckd, nckd


def dkd_loss(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array,
             alpha: float | jax.Array, beta: float | jax.Array,
             temperature: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(T^2 * mean(alpha*TCKD + beta*NCKD), T^2 * mean TCKD, T^2 * mean NCKD); alpha/beta may be per-sample."""
  if student_logits.shape[-1] < 3:
    raise UserError("DKD needs at least 3 classes: with 2 the non-target distribution has a "
                    "single class and NCKD is identically 0; use KD instead.")
  s = base.at_least_f32(student_logits) / temperature
  u = base.at_least_f32(jax.lax.stop_gradient(teacher_logits)) / temperature
  tckd, nckd = _decoupled_kl(s, u, labels)
  t2 = temperature**2
  return t2 * jnp.mean(alpha * tckd + beta * nckd), t2 * jnp.mean(tckd), t2 * jnp.mean(nckd)


# mdistiller `engine/cfg.py`; warmup_epoch_base 1: epochs counted from 1, so epoch 1 gets 1/20.
@registry.register("dkd", defaults=dict(alpha=1.0, beta=8.0, temperature=4.0, ce_weight=1.0,
                                        warmup_epochs=20.0, warmup_epoch_base=1,
                                        logit_standardization=False))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """DKD with `cfg.dkd.{alpha, beta, temperature, ce_weight, warmup_epochs, warmup_epoch_base,
  logit_standardization}`."""
  c = cfg.dkd
  alpha, beta, t, w_ce = float(c.alpha), float(c.beta), float(c.temperature), float(c.ce_weight)
  warmup, epoch_base = float(c.warmup_epochs), int(c.warmup_epoch_base)
  prepare = base.logit_preprocess(bool(c.logit_standardization))

  def terms(params, state, student_out, teacher_out, batch, progress):
    del params
    labels = batch["label"]
    ce = base.cross_entropy(student_out[0], labels)
    dkd, tckd, nckd = dkd_loss(prepare(student_out[0]), prepare(base.ensemble_logits(teacher_out)), labels,
                               alpha, beta, t)
    ramp = base.warmup_factor(progress, warmup, epoch_base)
    metrics = {"loss_ce": ce, "loss_dkd": dkd, "loss_tckd": tckd, "loss_nckd": nckd,
               "dkd_warmup": ramp}
    return (w_ce * ce, ramp * dkd), metrics, state

  return base.Method(name="dkd", needs_teacher=True, loss=base.summed(terms), split_loss=terms,
                     multi_teacher=True)
