"""KDSVD: Self-supervised KD using Singular Value Decomposition (Lee, Kim, Song; ECCV 2018).

kdjax follows mdistiller's port (`mdistiller/distillers/KDSVD.py`), on the post-ReLU stage
outputs `feats[1:]` paired in order up to the shorter list:

* each map, NCHW, is viewed as (B, C*H, W) (mdistiller's `feat.view(B, C * H, W)`) and
  SVD'd: right singular vectors V (B, W, W), singular values s (B, W), so the singular
  vectors live on the map width;
* teacher: the top k = 1 vectors and values, student: the top k + 3; vectors normalised
  along W (`F.normalize(dim=1)`), the teacher's values normalised over its k;
* alignment: each teacher vector gets the student vector of largest |cosine|, times the
  sign of that cosine; both sides are then scaled by the teacher's normalised values;
* for consecutive stages i-1, i: RBF kernels exp(-(v_i[a] - v_{i-1}[b])^2 / 8) between
  every entry a of stage i's vector and b of stage i-1's, per side;
  L_svd = sum_i sum (rbf_S - rbf_T)^2 / B (non-finite entries dropped in the reference).

L = w_ce * CE + w_svd * L_svd; CIFAR-100 (mdistiller `cfg.KDSVD`, `configs/cifar100/kdsvd.yaml`):
CE 1, KDSVD 1, k = 1. No CIFAR-100 number has been published for KDSVD.

RepDistiller's port (`distiller_zoo/KDSVD.py`) views each map differently: as
(B, H*W, C) (`feat.view(B, C, H * W).transpose(-2, -1)`, the original TensorFlow layout), an
SVD over channels whose vectors live on C. On the same batch its loss differs from
mdistiller's by orders of magnitude (about 200x on random post-ReLU maps of resnet8x4's
stage shapes), and it needs equal teacher and student channel counts
instead of equal widths. kdjax does not offer it as a variant: at the last CIFAR stage
H*W < C (64 < 256 for resnet8x4), where the right singular vectors are not the full
eigenbasis that `svd_right`'s gradient formula below is written for.

On the CPU the six SVDs of a step are chained so that no two run at once: concurrent
LAPACK SVDs deadlock XLA:CPU in jaxlib 0.10 (kdjax/linalg.py). Values are unchanged.

kdjax differences, both about numerics the reference leaves undefined:
* The sign of a singular vector is arbitrary (LAPACK's choice: CPU and GPU PyTorch can
  differ), and the loss depends on the teacher's signs. kdjax fixes it: every kept vector is
  flipped so that its largest-magnitude entry is positive (the student's sign does not
  matter after alignment).
* Gradients: the student's right singular vectors are differentiated through their
  characterisation as eigenvectors of G = X^T X, dV = V (F o (V^T dG V)),
  F_ij = 1 / (s_j^2 - s_i^2), with a custom VJP in which F_ij is 0 (double-where) for pairs
  whose s^2 differ by less than float eps * s_max^2 (repeated singular values, zero maps):
  the gradient there is undefined, JAX's and PyTorch's SVD rules return inf/NaN, and the
  reference's `where(isfinite(...))` on the forward values cannot clean the backward pass.
  Non-finite feature entries are set to 0 before the SVD (double-where: they get zero
  gradient) instead of cleaning the SVD's outputs.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from kdjax import linalg, ops
from kdjax.errors import UserError
from kdjax.methods import _common, base


@jax.custom_vjp
def svd_right(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(s (B, n), V (B, n, n)) of the thin SVD of x (B, m, n), m >= n, with a finite gradient."""
  _, s, vh = jnp.linalg.svd(x, full_matrices=False)
  return s, jnp.swapaxes(vh, -1, -2)


def _svd_right_fwd(x):
  u, s, vh = jnp.linalg.svd(x, full_matrices=False)
  v = jnp.swapaxes(vh, -1, -2)
  return (s, v), (x, u, s, v)


def _svd_right_bwd(res, cotangents):
  x, u, s, v = res
  s_bar, v_bar = cotangents
  lam = jnp.square(s)
  diff = lam[..., None, :] - lam[..., :, None]  # diff[i, j] = lam_j - lam_i
  tol = jnp.finfo(x.dtype).eps * jnp.max(lam, axis=-1, keepdims=True)[..., None]
  distinct = jnp.abs(diff) > tol
  # Double-where: the divisor is 1 where the pair is (numerically) degenerate, then masked.
  f = jnp.where(distinct, 1.0 / jnp.where(distinct, diff, 1.0), 0.0)
  vt = jnp.swapaxes(v, -1, -2)
  m = v @ (f * (vt @ v_bar)) @ vt
  x_bar = x @ (m + jnp.swapaxes(m, -1, -2))
  x_bar = x_bar + (u * s_bar[..., None, :]) @ vt  # ds_i = u_i^T dX v_i
  return (x_bar,)


svd_right.defvjp(_svd_right_fwd, _svd_right_bwd)


def _canonical_sign(v: jax.Array) -> jax.Array:
  """Flips each column of v (B, n, k) so that its largest-magnitude entry is positive."""
  top = jnp.take_along_axis(v, jnp.argmax(jnp.abs(v), axis=1)[:, None, :], axis=1)
  return v * jnp.where(top < 0, -1.0, 1.0).astype(v.dtype)


def stage_svd(f: jax.Array, n: int, after: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(top-n normalised right singular vectors (B, W, n'), their values normalised (B, n')), n' = min(n, W).

  On the CPU the SVD starts only once `after` (the previous SVD's output) exists: see `kdjax.linalg`.
  """
  b, h, w, c = f.shape
  f = base.at_least_f32(f)
  f = jnp.where(jnp.isfinite(f), f, 0.0)
  x = jnp.transpose(f, (0, 3, 1, 2)).reshape(b, c * h, w)  # torch's NCHW .view(B, C*H, W)
  if c * h < w:
    raise UserError(f"KDSVD needs C*H >= W for its (B, C*H, W) SVD; got a {h}x{w}x{c} map.")
  s, v = svd_right(linalg.after(x, after))
  v = ops.l2_normalize(_canonical_sign(v[:, :, :n]), axis=1)
  return v, ops.l2_normalize(s[:, :n], axis=1)


def align(v_s: jax.Array, v_t: jax.Array) -> jax.Array:
  """The student vector of largest |cosine| with each teacher vector, times the cosine's sign."""
  cosine = jnp.swapaxes(v_s, -1, -2) @ v_t  # (B, n_s, k)
  max_abs = jnp.max(jnp.abs(cosine), axis=1, keepdims=True)
  mask = jnp.where(max_abs == jnp.abs(cosine), jnp.sign(cosine), 0.0)
  return v_s @ jax.lax.stop_gradient(mask)


def _rbf(v: jax.Array, v_prev: jax.Array) -> jax.Array:
  """exp(-(v[a] - v_prev[b])^2 / 8) for all entries a, b: (B, W_i, W_{i-1}, k)."""
  return jnp.exp(-jnp.square(v[:, :, None, :] - v_prev[:, None, :, :]) / 8.0)


def kdsvd_loss(g_s: Sequence[jax.Array], g_t: Sequence[jax.Array], k: int) -> jax.Array:
  """Sum over consecutive stage pairs of sum (rbf_S - rbf_T)^2 / B (teacher maps constant)."""
  total, prev, last_svd = jnp.float32(0.0), None, None
  for f_s, f_t in zip(g_s, g_t):
    if f_s.shape[2] != f_t.shape[2]:
      raise UserError(f"KDSVD aligns singular vectors over the map width: the student's {f_s.shape[1:3]} "
                      f"and the teacher's {f_t.shape[1:3]} maps of a stage must be equally wide.")
    # The stages' SVDs are chained (teacher, student, next teacher, ...) so that they never run
    # concurrently: concurrent LAPACK SVDs deadlock XLA:CPU (kdjax/linalg.py, issue 16).
    v_t, s_t = stage_svd(jax.lax.stop_gradient(f_t), k, after=last_svd)
    v_s, s_s = stage_svd(f_s, k + 3, after=s_t)
    last_svd = s_s
    v_s = align(v_s, v_t)
    scale = jax.lax.stop_gradient(s_t)[:, None, :]
    v_t, v_s = v_t * scale, v_s * scale
    if prev is not None:
      diff = _rbf(v_s, prev[0]) - jax.lax.stop_gradient(_rbf(v_t, prev[1]))
      total = total + jnp.sum(jnp.square(diff))
    prev = (v_s, v_t)
  return total / g_s[0].shape[0]


def _term(c: ml_collections.ConfigDict, params, state, student_feats, teacher_feats):
  """KDSVD over stages 1..n with `c.k` singular vectors (CIFAR: ce 1, feat 1, k 1)."""
  del params
  return kdsvd_loss(student_feats["feats"][1:], teacher_feats["feats"][1:], int(c.k)), state


_common.register_feature_method("kdsvd", _term, defaults=dict(ce_weight=1.0, feat_weight=1.0, k=1),
                                lapack_in_step=True)
