"""VID: Variational Information Distillation (Ahn et al., CVPR 2019, arXiv 1904.05835).

For each stage k after the stem, the teacher map is modelled as a Gaussian whose
mean is regressed from the student map and whose variance is one learned value per
teacher channel:

    mu = conv1x1 -> ReLU -> conv1x1 -> ReLU -> conv1x1 (C_S -> C_T -> C_T -> C_T, no bias)
    sigma_c^2 = softplus(alpha_c) + eps,   alpha_c = softplus^-1(init_pred_var - eps)
    nll_k = mean_{b,h,w,c} 0.5 * ((mu(f_k^S) - f_k^T)^2 / sigma_c^2 + log sigma_c^2)
    L = w_ce * CE + w_vid * sum_k nll_k

over the post-ReLU stage outputs `feats[1:]` (RepDistiller `feat[1:-1]`), paired in
order up to the shorter list, the larger map adaptive-average-pooled to the smaller.

CIFAR-100 settings (mdistiller `cfg.VID`, RepDistiller `--distill vid -b 1`): CE 1, VID 1,
init_pred_var 5, eps 1e-5.

Convention: mdistiller keeps the alphas in a plain Python list, so they are never
registered with its optimiser and the variances stay at 5; RepDistiller's `VIDLoss`
registers them and trains them with the regressors (SGD with weight decay). The
published CIFAR-100 numbers come from RepDistiller, so kdjax follows RepDistiller
here: regressors and alphas are both method params (optimised, decayed, and left out
of the exported student). Pairing stops at the shorter list as RepDistiller's zip does
(mdistiller indexes the teacher by the student's stage count).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kdjax.methods import _common
from kdjax.models import layers


class VIDStage(nn.Module):
  """One stage's mean regressor and per-channel variance: f_s (B, H, W, C_S) -> (mu, sigma^2)."""
  t_channels: int
  init_pred_var: float = 5.0
  eps: float = 1e-5

  @nn.compact
  def __call__(self, f_s: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = f_s
    for i in range(3):
      x = layers.conv(self.t_channels, 1, name=f"conv{i}")(x)
      if i < 2:
        x = nn.relu(x)
    alpha0 = float(np.log(np.expm1(self.init_pred_var - self.eps)))  # softplus^-1(init - eps)
    alpha = self.param("alpha", nn.initializers.constant(alpha0), (self.t_channels,), jnp.float32)
    return x, jax.nn.softplus(alpha) + self.eps


def _stage_pairs(student_feats: dict[str, Any],
                 teacher_feats: dict[str, Any]) -> list[tuple[jax.Array, jax.Array]]:
  """Float32 (student, teacher) maps of the paired stages after the stem, spatially matched."""
  pairs = zip(_common.f32(student_feats["feats"][1:]), _common.f32(teacher_feats["feats"][1:]))
  return [_common.match_spatial(f_s, f_t) for f_s, f_t in pairs]


def gaussian_nll(mu: jax.Array, var: jax.Array, target: jax.Array) -> jax.Array:
  """mean of 0.5 * ((mu - target)^2 / var + log var), var broadcast over the channel axis."""
  return jnp.mean(0.5 * (jnp.square(mu - target) / var + jnp.log(var)))


def vid_loss(params: dict[str, Any], pairs: Sequence[tuple[jax.Array, jax.Array]],
             init_pred_var: float, eps: float) -> jax.Array:
  """Sum over stages of the Gaussian negative log-likelihood of the teacher map."""
  total = jnp.float32(0.0)
  for k, (f_s, f_t) in enumerate(pairs):
    stage = VIDStage(f_t.shape[-1], init_pred_var, eps)
    mu, var = stage.apply({"params": params[f"stage{k + 1}"]}, f_s)
    total = total + gaussian_nll(mu, var, f_t)
  return total


def _init(c: ml_collections.ConfigDict, rng, student_feats, teacher_feats):
  """One VID stage (variance and regressor) per stage pair."""
  params = {}
  for k, (f_s, f_t) in enumerate(_stage_pairs(student_feats, teacher_feats)):
    stage = VIDStage(f_t.shape[-1], float(c.init_pred_var), float(c.eps))
    params[f"stage{k + 1}"] = stage.init(jax.random.fold_in(rng, k), jnp.zeros_like(f_s))["params"]
  return params, {}


def _term(c: ml_collections.ConfigDict, params, state, student_feats, teacher_feats):
  """VID over the stage pairs (CIFAR: ce 1, feat 1, init_pred_var 5, eps 1e-5)."""
  pairs = _stage_pairs(student_feats, teacher_feats)
  return vid_loss(params, pairs, float(c.init_pred_var), float(c.eps)), state


_common.register_feature_method("vid", _term, _init, defaults=dict(
    ce_weight=1.0, feat_weight=1.0, init_pred_var=5.0, eps=1e-5))
