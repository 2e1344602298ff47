"""DIST: Huang, You, Wang, Qian & Xu (NeurIPS 2022), "Knowledge Distillation from A Stronger Teacher".

With p = softmax(z / T) for student and teacher (B x C) and rho the Pearson correlation
(cosine similarity of mean-centred vectors, eps 1e-8 added to the product of norms):

    inter = 1 - mean_b rho(p_s[b, :], p_t[b, :])      (each sample's class distribution)
    intra = 1 - mean_c rho(p_s[:, c], p_t[:, c])      (each class's distribution over the batch)
    L = w_ce * CE(z_s, y) + T^2 * (beta * inter + gamma * intra)

Only the relations between predictions are matched, not their values, which is what
the paper argues survives a large teacher-student gap. The release's CIFAR recipe
(docs/sources.md [S6]) computes beta = gamma = 1 inside the loss and weights the sum by
`kd_loss_weight` 2, with T = 4 and CE weight 1: here beta = gamma = 2 (docs/methods.md §1.2).
The intra term is a statistic of the whole batch, so it depends on the batch size.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from kdjax import ops
from kdjax.methods import _common, base, registry


def pearson(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Row-wise Pearson correlation of a and b (B x C -> B), the release's eps in the denominator."""
  a = a - jnp.mean(a, axis=1, keepdims=True)
  b = b - jnp.mean(b, axis=1, keepdims=True)
  return jnp.sum(a * b, axis=1) / (ops.norm(a, axis=1) * ops.norm(b, axis=1) + eps)


def dist_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float,
              beta: float, gamma: float) -> tuple[jax.Array, jax.Array]:
  """(T^2 * beta * inter, T^2 * gamma * intra) relation losses of temperature-softened logits."""
  p_s = jax.nn.softmax(base.at_least_f32(student_logits) / temperature, axis=1)
  p_t = jax.nn.softmax(base.at_least_f32(jax.lax.stop_gradient(teacher_logits)) / temperature, axis=1)
  inter = 1.0 - jnp.mean(pearson(p_s, p_t))
  intra = 1.0 - jnp.mean(pearson(p_s.T, p_t.T))
  return temperature**2 * beta * inter, temperature**2 * gamma * intra


@registry.register("dist", defaults=dict(temperature=4.0, beta=2.0, gamma=2.0, ce_weight=1.0))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """DIST with `cfg.dist.{temperature, beta, gamma, ce_weight}` (CIFAR release: 4, 2, 2, 1)."""
  t, beta, gamma = float(cfg.dist.temperature), float(cfg.dist.beta), float(cfg.dist.gamma)
  w_ce = float(cfg.dist.ce_weight)

  def loss(params, state, student_out, teacher_out, batch, progress):
    del params, progress
    teacher_logits = _common.single_teacher(teacher_out, "dist")[0]
    ce = base.cross_entropy(student_out[0], batch["label"])
    inter, intra = dist_loss(student_out[0], teacher_logits, t, beta, gamma)
    return w_ce * ce + inter + intra, {"loss_ce": ce, "loss_inter": inter, "loss_intra": intra}, state

  return base.Method(name="dist", needs_teacher=True, loss=loss)
