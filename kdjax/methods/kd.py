"""KD: Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network".

    L = w_ce * CE(z_s, y) + w_kd * T^2 * mean_b KL(softmax(z_t/T) || softmax(z_s/T))

The KL is summed over classes and averaged over the batch (mdistiller and
RepDistiller compute the same number). Both sides are log-softmaxes, so the loss
never forms 0 * log 0.

Logit standardization (LS, Sun et al., CVPR 2024; `config.kd.logit_standardization`): both
sides' logits are z-scored per sample (`base.standardize_logits`) before the temperature, so
the student matches the teacher's logit relations rather than their range; T is then the
"base temperature" of that paper (docs/methods.md §1.1; configs/kd_ls_cifar.py).

Ensembles (`config.teachers`, `multi_teacher=True`): z_t is the teachers' mean logits
(`base.ensemble_logits`), the usual ensemble-KD target; with one teacher it is that
teacher's logits, so single-teacher KD is unchanged.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from kdjax.methods import base, registry


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
  """T^2 * batch-mean KL(teacher || student) of temperature-softened logits."""
  log_ps = jax.nn.log_softmax(base.at_least_f32(student_logits) / temperature, axis=-1)
  log_pt = jax.nn.log_softmax(
      base.at_least_f32(jax.lax.stop_gradient(teacher_logits)) / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
  return temperature**2 * jnp.mean(kl)


@registry.register("kd", defaults=dict(temperature=4.0, ce_weight=0.1, kd_weight=0.9,
                                       logit_standardization=False))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """KD with `cfg.kd.{temperature, ce_weight, kd_weight, logit_standardization}` (CIFAR: 4, 0.1, 0.9, off)."""
  t, w_ce, w_kd = float(cfg.kd.temperature), float(cfg.kd.ce_weight), float(cfg.kd.kd_weight)
  prepare = base.logit_preprocess(bool(cfg.kd.logit_standardization))

  def terms(params, state, student_out, teacher_out, batch, progress):
    del params, progress
    ce = base.cross_entropy(student_out[0], batch["label"])
    kd = kd_loss(prepare(student_out[0]), prepare(base.ensemble_logits(teacher_out)), t)
    return (w_ce * ce, w_kd * kd), {"loss_ce": ce, "loss_kd": kd}, state

  return base.Method(name="kd", needs_teacher=True, loss=base.summed(terms), split_loss=terms,
                     multi_teacher=True)
