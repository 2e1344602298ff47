"""AT: Attention Transfer (Zagoruyko & Komodakis, ICLR 2017, arXiv 1612.03928).

The attention map of a feature map f (B, H, W, C) is the per-position channel mean
of f^p, flattened per sample and L2-normalised: a(f) = normalise(mean_c f^p). Then

    L = w_ce * CE + w_at * sum_k mean_{b, positions} (a(f_k^S) - a(f_k^T))^2

over the stage outputs after the stem (post-ReLU `feats[1:]`, RepDistiller's
`feat[1:-1]`), pairing stages in order and stopping at the shorter list (zip). Where
the two maps differ in size the larger one is adaptive-average-pooled to the
smaller first.

CIFAR-100 weights (mdistiller `cfg.AT`, RepDistiller `--distill attention -b 1000`):
CE 1, AT 1000, p = 2. The references agree; mdistiller's `AT.py` was followed.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from kdjax import ops
from kdjax.methods import _common


def attention_map(f: jax.Array, p: float) -> jax.Array:
  """L2-normalised, flattened channel mean of f^p: (B, H, W, C) -> (B, H*W)."""
  # An integral p uses integer powers, as torch's pow(2) does (exact, defined for negative inputs).
  powered = f ** int(p) if float(p).is_integer() else f ** p
  a = jnp.mean(powered, axis=-1)
  return ops.l2_normalize(a.reshape(a.shape[0], -1))


def at_loss(g_s: Sequence[jax.Array], g_t: Sequence[jax.Array], p: float) -> jax.Array:
  """Sum over paired stages of the mean squared difference of attention maps."""
  total = jnp.float32(0.0)
  for f_s, f_t in zip(_common.f32(g_s), _common.f32(g_t)):
    f_s, f_t = _common.match_spatial(f_s, f_t)
    total = total + jnp.mean(jnp.square(attention_map(f_s, p) - attention_map(f_t, p)))
  return total


def _term(c: ml_collections.ConfigDict, params, state, student_feats, teacher_feats):
  """AT between stages 1..n at `c.p` (CIFAR: ce 1, feat 1000, p 2)."""
  del params
  return at_loss(student_feats["feats"][1:], teacher_feats["feats"][1:], float(c.p)), state


_common.register_feature_method("at", _term, defaults=dict(ce_weight=1.0, feat_weight=1000.0, p=2.0))
