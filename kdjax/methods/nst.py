"""NST: Neuron Selectivity Transfer (Huang & Wang, 2017, arXiv 1707.01219).

Each channel of a stage map, flattened over positions and L2-normalised, is one
sample of that layer's "neuron selectivity" distribution; NST matches the student
and teacher distributions with the squared MMD under the polynomial kernel
k(a, b) = (a . b)^2:

    MMD^2 = mean k(T, T) + mean k(S, S) - 2 mean k(S, T)      (means over B x C x C')
    L = w_ce * CE + w_nst * sum_k MMD^2(f_k^S, f_k^T)

over the post-ReLU stage outputs after the stem (`feats[1:]`, RepDistiller's
`feat[1:-1]`), paired in order up to the shorter list, the larger map
adaptive-average-pooled to the smaller. The teacher-teacher term is a constant.

CIFAR-100 weights (mdistiller `cfg.NST`, RepDistiller `--distill nst -b 50`): CE 1,
NST 50. The references agree; mdistiller's `NST.py` was followed.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from kdjax import ops
from kdjax.methods import _common


def _selectivity(f: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, H*W, C) with each channel L2-normalised over positions."""
  return ops.l2_normalize(f.reshape(f.shape[0], -1, f.shape[-1]), axis=1)


def _poly_kernel_mean(a: jax.Array, b: jax.Array) -> jax.Array:
  """mean over (B, C_a, C_b) of (a_c . b_d)^2 for channel vectors a (B, P, C_a), b (B, P, C_b)."""
  return jnp.mean(jnp.square(jnp.einsum("bpc,bpd->bcd", a, b)))


def nst_loss(g_s: Sequence[jax.Array], g_t: Sequence[jax.Array]) -> jax.Array:
  """Sum over paired stages of the polynomial-kernel squared MMD between channel distributions."""
  total = jnp.float32(0.0)
  for f_s, f_t in zip(_common.f32(g_s), _common.f32(g_t)):
    f_s, f_t = _common.match_spatial(f_s, f_t)
    s, t = _selectivity(f_s), _selectivity(f_t)
    total = total + (jax.lax.stop_gradient(_poly_kernel_mean(t, t)) + _poly_kernel_mean(s, s)
                     - 2.0 * _poly_kernel_mean(s, t))
  return total


def _term(c: ml_collections.ConfigDict, params, state, student_feats, teacher_feats):
  """NST between stages 1..n (CIFAR: ce 1, feat 50)."""
  del c, params
  return nst_loss(student_feats["feats"][1:], teacher_feats["feats"][1:]), state


_common.register_feature_method("nst", _term, defaults=dict(ce_weight=1.0, feat_weight=50.0))
