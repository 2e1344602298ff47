"""FitNets: Hints for Thin Deep Nets (Romero et al., ICLR 2015, arXiv 1412.6550).

A trainable regressor r maps the student's hint-layer map onto the teacher's:

    L = w_ce * CE + w_hint * mean_{b,h,w,c} (r(f_k^S) - f_k^T)^2,   k = hint_layer = 2

with f_k the post-ReLU output of stage k (`feats[2]`, RepDistiller's `feat[2]`: the
same tensor in both references). r is mdistiller's / RepDistiller's `ConvReg`:
a convolution picked by the two maps' heights (student twice the teacher's: 3x3
stride 2, pad 1; half: 4x4 stride-2 transposed conv, pad 1; otherwise a 'valid'
conv of kernel (1 + H_s - H_t, 1 + W_s - W_t)), then BatchNorm and ReLU. It is
trained with the student in one stage (no separate hint pre-training), and its BN
runs in train mode; its running statistics live in the method state.

CIFAR-100 weights (mdistiller `cfg.FITNET`, RepDistiller `--distill hint -a 0 -b 100`):
CE 1, hint 100. The two references agree; mdistiller's `FitNet.py` was followed.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kdjax.errors import UserError
from kdjax.methods import _common
from kdjax.models import layers


class ConvReg(nn.Module):
  """The hint regressor (NHWC): a conv picked by the two maps' (H, W, C) shapes, BN, ReLU.

  `use_relu=False` is RepDistiller's `ConvReg(use_relu=False)`, AB's connector.
  """
  s_shape: tuple[int, int, int]
  t_shape: tuple[int, int, int]
  use_relu: bool = True
  method: str = "FitNet"
  fix: str = "choose another --config.fitnet.hint_layer."

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    (s_h, s_w, s_c), (t_h, t_w, t_c) = self.s_shape, self.t_shape
    if s_h == 2 * t_h:
      x = layers.conv(t_c, 3, stride=2, padding=1, use_bias=True, in_features=s_c, name="conv")(x)
    elif 2 * s_h == t_h:
      # ConvTranspose2d(k=4, s=2, p=1) = a conv over the 2x-dilated input padded by k-1-p = 2.
      # Kernel (4, 4, t_c, s_c); PyTorch's fan-in for a transposed conv is t_c * 16.
      x = nn.ConvTranspose(t_c, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                           transpose_kernel=True, kernel_init=layers.torch_default_kernel_init,
                           bias_init=layers.torch_default_bias_init(t_c * 16), name="conv")(x)
    elif s_h >= t_h:
      kh, kw = 1 + s_h - t_h, 1 + s_w - t_w
      x = nn.Conv(t_c, (kh, kw), padding="VALID", kernel_init=layers.torch_default_kernel_init,
                  bias_init=layers.torch_default_bias_init(s_c * kh * kw), name="conv")(x)
    else:
      raise UserError(f"{self.method}'s regressor cannot map a {s_h}x{s_w} student map onto a "
                      f"{t_h}x{t_w} teacher map (the teacher must be at most twice as large); {self.fix}")
    x = layers.batch_norm(train, name="bn")(x)
    return nn.relu(x) if self.use_relu else x


def _hint_pair(student_feats: dict[str, Any], teacher_feats: dict[str, Any],
               layer: int) -> tuple[jax.Array, jax.Array]:
  """(student, teacher) hint-layer maps in float32."""
  return tuple(_common.f32([student_feats["feats"][layer], teacher_feats["feats"][layer]]))


def _regressor(f_s: jax.Array, f_t: jax.Array) -> ConvReg:
  """The ConvReg for these two maps (its shape is static, so init and loss rebuild the same one)."""
  return ConvReg(tuple(f_s.shape[1:]), tuple(f_t.shape[1:]))


def hint_loss(params: Any, batch_stats: Any, f_s: jax.Array,
              f_t: jax.Array) -> tuple[jax.Array, Any]:
  """(mean squared error between r(f_s) and f_t, r's updated BN statistics); r in train mode."""
  out, mutated = _regressor(f_s, f_t).apply({"params": params, "batch_stats": batch_stats}, f_s,
                                            train=True, mutable=["batch_stats"])
  return jnp.mean(jnp.square(out - f_t)), mutated["batch_stats"]


def _init(c: ml_collections.ConfigDict, rng, student_feats, teacher_feats):
  """The hint regressor (and its BatchNorm statistics) for stage `c.hint_layer`."""
  f_s, f_t = _hint_pair(student_feats, teacher_feats, int(c.hint_layer))
  variables = _regressor(f_s, f_t).init(rng, jnp.zeros_like(f_s), train=False)
  return variables["params"], {"batch_stats": variables["batch_stats"]}


def _term(c: ml_collections.ConfigDict, params, state, student_feats, teacher_feats):
  """The hint loss at stage `c.hint_layer` (CIFAR: ce 1, feat 100, hint_layer 2)."""
  f_s, f_t = _hint_pair(student_feats, teacher_feats, int(c.hint_layer))
  value, batch_stats = hint_loss(params, state["batch_stats"], f_s, f_t)
  return value, {"batch_stats": batch_stats}


_common.register_feature_method("fitnet", _term, _init, defaults=dict(ce_weight=1.0, feat_weight=100.0,
                                                                      hint_layer=2))
