"""MLKD: Jin, Wang & Lin (CVPR 2023), "Multi-level Logit Distillation", as its release computes it.

Two views of each batch: weak (crop + flip) and strong (crop + flip + RandAugment, FixMatch's
CIFAR variant with Cutout; kdjax/data/randaugment.py); student and teacher run on both
(`view_forward='each'`). With p = softmax over classes at temperature T, five temperatures
T in {T0, 3, 5, 2, 6} (T0 = `temperature`, 4), and the release's masks from the teacher's weak
predictions at T = 1 — `mask`: samples whose top confidence is at most the batch median
(`np.percentile(., 50)`, linear interpolation), `class_mask`: classes whose summed probability
is at most the median over classes —

    L = w_ce * (CE(weak) + CE(strong))
      + w_kd * mean(mask) * sum_T KD_T(weak)                              (instance level)
      + w_kd * [KD_T0 + KD_3 + KD_5](strong) + w_kd * [KD_2 + KD_6](weak)
      + w_kd * mean(class_mask) * sum_T sum((P_t^T P_t - P_s^T P_s)^2) / C   (class level, weak)
      + w_kd * mean(mask) * sum_T sum((P_t P_t^T - P_s P_s^T)^2) / B         (batch level, weak)

with KD_T kdjax's T^2 batch-mean KL (`logit_standardization` z-scores the logits of the KD terms
only, as the LS release's MLKD does). This is the release to the letter, including what its
code does beside what the paper writes: its per-sample masks multiply losses already averaged
over the batch, so each only scales its term by the share of masked samples (or classes); its
"strong" KD sums the T = 2 and 6 terms on the weak view; the strong-view class and batch terms
it computes are not in its total. docs/methods.md §1.7.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from kdjax.data import randaugment
from kdjax.methods import _common, base, registry
from kdjax.methods import kd as kd_lib

EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)


def median(x: jax.Array) -> jax.Array:
  """`np.percentile(x, 50)` (linear interpolation) of a vector."""
  return jnp.percentile(x, 50.0, method="linear")


def class_consistency(p_s: jax.Array, p_t: jax.Array) -> jax.Array:
  """sum((P_t^T P_t - P_s^T P_s)^2) / C for B x C probabilities."""
  return jnp.sum(jnp.square(p_t.T @ p_t - p_s.T @ p_s)) / p_s.shape[1]


def batch_consistency(p_s: jax.Array, p_t: jax.Array) -> jax.Array:
  """sum((P_t P_t^T - P_s P_s^T)^2) / B for B x C probabilities."""
  return jnp.sum(jnp.square(p_t @ p_t.T - p_s @ p_s.T)) / p_s.shape[0]


def mlkd_terms(z_s_weak: jax.Array, z_s_strong: jax.Array, z_t_weak: jax.Array, z_t_strong: jax.Array,
               temperature: float, standardize: bool = False) -> dict[str, jax.Array]:
  """The release's unweighted distillation terms (KD weak, KD strong, class, batch) and its masks;
  `standardize`: logit standardization in the KD terms only, as the LS release's MLKD does."""
  z_s_weak, z_s_strong = base.at_least_f32(z_s_weak), base.at_least_f32(z_s_strong)
  z_t_weak, z_t_strong = jax.lax.stop_gradient((base.at_least_f32(z_t_weak), base.at_least_f32(z_t_strong)))
  temps = (temperature,) + EXTRA_TEMPERATURES
  p_t_weak = jax.nn.softmax(z_t_weak, axis=1)
  confidence = jnp.max(p_t_weak, axis=1)
  mask = jnp.mean((confidence <= median(confidence)).astype(jnp.float32))
  class_confidence = jnp.sum(p_t_weak, axis=0)
  class_mask = jnp.mean((class_confidence <= median(class_confidence)).astype(jnp.float32))
  soft = lambda z, t: jax.nn.softmax(z / t, axis=1)
  ls = base.logit_preprocess(standardize)
  kd = lambda s, t_, temp: kd_lib.kd_loss(ls(s), ls(t_), temp)
  kd_weak = sum(kd(z_s_weak, z_t_weak, t) for t in temps) * mask
  kd_strong = (sum(kd(z_s_strong, z_t_strong, t) for t in temps[:3])
               + sum(kd(z_s_weak, z_t_weak, t) for t in temps[3:]))
  cc = sum(class_consistency(soft(z_s_weak, t), soft(z_t_weak, t)) for t in temps) * class_mask
  bc = sum(batch_consistency(soft(z_s_weak, t), soft(z_t_weak, t)) for t in temps) * mask
  return {"kd_weak": kd_weak, "kd_strong": kd_strong, "cc": cc, "bc": bc, "mask": mask, "class_mask": class_mask}


@registry.register("mlkd", defaults=dict(temperature=4.0, ce_weight=0.1, kd_weight=0.9, randaugment_ops=2,
                                         logit_standardization=False))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """MLKD with `cfg.mlkd.{temperature, ce_weight, kd_weight, randaugment_ops, logit_standardization}`
  (the release's KD defaults: 4, 0.1, 0.9; RandAugment(2); LS off)."""
  c = cfg.mlkd
  t, w_ce, w_kd, ops = float(c.temperature), float(c.ce_weight), float(c.kd_weight), int(c.randaugment_ops)
  standardize = bool(c.logit_standardization)

  def strong(key, images):
    return randaugment.rand_augment(key, images, ops)

  def loss(params, state, student_out, teacher_out, batch, progress):
    del params, progress
    (s_weak, _), (s_strong, _) = student_out
    t_weak, t_strong = (_common.single_teacher(o, "mlkd")[0] for o in teacher_out)
    labels = batch["label"]
    ce = base.cross_entropy(s_weak, labels) + base.cross_entropy(s_strong, labels)
    terms = mlkd_terms(s_weak, s_strong, t_weak, t_strong, t, standardize)
    distill = w_kd * (terms["kd_weak"] + terms["kd_strong"] + terms["cc"] + terms["bc"])
    metrics = {"loss_ce": ce, "loss_kd": terms["kd_weak"] + terms["kd_strong"], "loss_cc": terms["cc"],
               "loss_bc": terms["bc"], "mlkd_mask": terms["mask"]}
    return w_ce * ce + distill, metrics, state

  return base.Method(name="mlkd", needs_teacher=True, loss=loss, views=2, view_transforms=(None, strong),
                     view_forward="each")
