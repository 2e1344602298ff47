"""Tf-KD: Yuan, Tay, Li, Wang & Feng (CVPR 2020), "Revisiting Knowledge Distillation via Label
Smoothing Regularization" (teacher-free KD).

KD as a learned label smoothing, with two teacher-free variants (`config.tfkd.mode`):

* `self`: the teacher is the student's own architecture trained normally first (kdjax
  auto-trains it: `teacher.arch` = the student), then
      L = (1 - a) * CE + a * m * T^2 * KL_mean(softmax(z_t / T) || softmax(z_s / T));
* `reg`: no network teacher; a virtual one puts `correct_prob` on the label and spreads the
  rest uniformly, p^d, and
      L = (1 - a) * CE + a * m * KL_mean(softmax(p^d / T) || softmax(z_s)),
  the release's form: the temperature softens p^d itself (a softmax of probabilities) and the
  student's logits stay unscaled.

KL_mean is PyTorch's `nn.KLDivLoss()` default as the release calls it: the element-wise sum
divided by batch x classes (not per sample), which is why the release's multiplier m reaches
50-100 for some networks. docs/methods.md §1.5.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from kdjax.errors import UserError
from kdjax.methods import base, registry

MODES = ("self", "reg")


def kl_mean(log_q: jax.Array, log_p: jax.Array, valid: jax.Array) -> jax.Array:
  """sum_{b,c} p (log p - log q) / (rows x classes) over the `valid` rows (`nn.KLDivLoss()`), from
  log-probabilities (a class whose p underflows to 0 adds 0, not 0 * log 0)."""
  terms = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  return jnp.sum(jnp.where(valid, terms, 0.0)) / (jnp.maximum(jnp.sum(valid), 1) * log_p.shape[-1])


def virtual_teacher(labels: jax.Array, num_classes: int, correct_prob: float, temperature: float) -> jax.Array:
  """log softmax(p^d / T): p^d puts `correct_prob` on the label and (1 - it) / (K - 1) on each other class."""
  p = jnp.where(jax.nn.one_hot(labels, num_classes) > 0, correct_prob, (1.0 - correct_prob) / (num_classes - 1))
  return jax.nn.log_softmax(p / temperature, axis=-1)


def self_term(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float,
              valid: jax.Array) -> jax.Array:
  """T^2 * KL_mean between the temperature-softened teacher and student."""
  log_q = jax.nn.log_softmax(base.at_least_f32(student_logits) / temperature, axis=-1)
  log_p = jax.nn.log_softmax(base.at_least_f32(jax.lax.stop_gradient(teacher_logits)) / temperature, axis=-1)
  return temperature**2 * kl_mean(log_q, log_p, valid)


def reg_term(student_logits: jax.Array, labels: jax.Array, temperature: float, correct_prob: float) -> jax.Array:
  """KL_mean between the virtual teacher and the (unscaled) student."""
  log_q = jax.nn.log_softmax(base.at_least_f32(student_logits), axis=-1)
  log_p = virtual_teacher(jnp.maximum(labels, 0), student_logits.shape[-1], correct_prob, temperature)
  return kl_mean(log_q, log_p, labels >= 0)


@registry.register("tfkd", defaults=dict(mode="self", alpha=0.95, temperature=20.0, multiplier=1.0,
                                         correct_prob=0.99))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """Tf-KD with `cfg.tfkd.{mode, alpha, temperature, multiplier, correct_prob}`."""
  c = cfg.tfkd
  mode, a, t, m, prob = str(c.mode), float(c.alpha), float(c.temperature), float(c.multiplier), float(c.correct_prob)
  if mode not in MODES:
    raise UserError(f"config.tfkd.mode={mode!r}; valid: {', '.join(MODES)}.")
  if not 0.0 < prob < 1.0:
    raise UserError(f"config.tfkd.correct_prob={prob}: the virtual teacher's label probability must be in (0, 1).")

  def loss(params, state, student_out, teacher_out, batch, progress):
    del params, progress
    labels = batch["label"]
    ce = base.cross_entropy(student_out[0], labels)
    if mode == "self":
      # Every example is distilled, unlabelled ones too (as KD does).
      term = self_term(student_out[0], base.ensemble_logits(teacher_out), t, jnp.ones_like(labels, bool))
    else:
      term = reg_term(student_out[0], labels, t, prob)
    return (1.0 - a) * ce + a * m * term, {"loss_ce": ce, "loss_tfkd": term}, state

  return base.Method(name="tfkd", needs_teacher=mode == "self", loss=loss, multi_teacher=mode == "self")
