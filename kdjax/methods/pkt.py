"""PKT: Probabilistic Knowledge Transfer (Passalis & Tefas, ECCV 2018, arXiv 1803.10837).

On the pooled features, each batch row is normalised by (||f|| + eps); the cosine
similarities K (B x B) are mapped to [0, 1] by (K + 1) / 2 and each row is
normalised to sum 1, giving conditional distributions P_S, P_T over the batch.

    L = w_ce * CE + w_pkt * mean_{i,j} P_T,ij log((P_T,ij + eps) / (P_S,ij + eps)),   eps = 1e-7

(mean over all B^2 entries, as the reference code does). The features are the
globally pooled vectors that feed the classifiers (`pooled`, RepDistiller `feat[-1]`).

CIFAR-100 weights (mdistiller `cfg.PKT`, RepDistiller `--distill pkt -b 30000`): CE 1,
PKT 30000. The references agree; mdistiller's `PKT.py` was followed.

Numerics: the reference divides by sqrt(sum f^2) + eps, whose gradient is NaN at a
zero row (d sqrt / dx at 0), and replaces NaN *values* afterwards, which cannot
repair the gradient. Here the sqrt is double-where guarded: a zero row gets norm 0
(the same value) and the finite gradient I / eps of f / (0 + eps). The reference's
NaN-to-zero step has no counterpart: the denominator is >= eps, so finite features
never produce a NaN.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from kdjax.methods import _common


def _safe_norm(f: jax.Array) -> jax.Array:
  """Row L2 norms (B, 1) with a finite gradient at zero rows (double where around the sqrt)."""
  sq = jnp.sum(jnp.square(f), axis=1, keepdims=True)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _similarity_distribution(f: jax.Array, eps: float) -> jax.Array:
  """Row-stochastic (cos + 1) / 2 similarity matrix of the rows of f (B, D)."""
  f = f / (_safe_norm(f) + eps)
  k = (f @ f.T + 1.0) / 2.0
  return k / jnp.sum(k, axis=1, keepdims=True)


def pkt_loss(f_s: jax.Array, f_t: jax.Array, eps: float = 1e-7) -> jax.Array:
  """mean over B^2 entries of P_T log((P_T + eps) / (P_S + eps)); pooled (B, D_s), (B, D_t)."""
  f_s, f_t = _common.f32([f_s.reshape(f_s.shape[0], -1), f_t.reshape(f_t.shape[0], -1)])
  p_s = _similarity_distribution(f_s, eps)
  p_t = _similarity_distribution(f_t, eps)
  # log of the ratio, as the reference: P_S and P_T are close, and a difference of two logs
  # would lose the small KL to rounding in float32.
  return jnp.mean(p_t * jnp.log((p_t + eps) / (p_s + eps)))


def _term(c: ml_collections.ConfigDict, params, state, student_feats, teacher_feats):
  """PKT on the pooled features with `c.eps` (CIFAR: ce 1, feat 30000, eps 1e-7)."""
  del params
  return pkt_loss(student_feats["pooled"], teacher_feats["pooled"], float(c.eps)), state


_common.register_feature_method("pkt", _term, defaults=dict(ce_weight=1.0, feat_weight=30000.0, eps=1e-7))
