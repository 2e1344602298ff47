"""SP: Similarity-Preserving Knowledge Distillation (Tung & Mori, ICCV 2019, arXiv 1907.09682).

The last stage's map (before pooling) flattened per sample, F (B, H*W*C), gives a
batch Gram matrix G = F F^T whose rows are L2-normalised; the student keeps the
teacher's pairwise similarities:

    L = w_ce * CE + w_sp * ||G_T - G_S||_F^2 / B^2

The map is the post-ReLU last stage output (`feats[-1]`, RepDistiller `feat[-2]`).
The Gram matrix does not depend on how a sample is flattened, so NHWC and NCHW
give the same loss.

CIFAR-100 weights (mdistiller `cfg.SP`, RepDistiller `--distill similarity -b 3000`):
CE 1, SP 3000. The references agree (RepDistiller's is marked as checked by the SP
author); mdistiller's `SP.py` was followed. A zero feature row gives a zero Gram row,
normalised like `F.normalize` (finite value and gradient).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from kdjax import ops
from kdjax.methods import _common


def _normalized_gram(f: jax.Array) -> jax.Array:
  """Row-L2-normalised Gram matrix (B, B) of the flattened samples of f."""
  flat = f.reshape(f.shape[0], -1)
  return ops.l2_normalize(flat @ flat.T, axis=1)


def sp_loss(f_s: jax.Array, f_t: jax.Array) -> jax.Array:
  """||G_T - G_S||_F^2 / B^2 with row-normalised batch Gram matrices."""
  f_s, f_t = _common.f32([f_s, f_t])
  b = f_s.shape[0]
  return jnp.sum(jnp.square(_normalized_gram(f_t) - _normalized_gram(f_s))) / (b * b)


def _term(c: ml_collections.ConfigDict, params, state, student_feats, teacher_feats):
  """SP on the last stage (CIFAR: ce 1, feat 3000)."""
  del c, params
  return sp_loss(student_feats["feats"][-1], teacher_feats["feats"][-1]), state


_common.register_feature_method("sp", _term, defaults=dict(ce_weight=1.0, feat_weight=3000.0))
