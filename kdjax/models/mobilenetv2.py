"""MobileNetV2 for CIFAR, registered as `MobileNetV2` (mdistiller's `mobile_half`: T = 6, width 0.5).

Layer for layer `MobileNetV2(T, feature_dim, width_mult)` of RepDistiller / mdistiller
`models/cifar/mobilenetv2.py`: a stride-2 3x3 stem `conv1`, seven stages `blocks.{s}` of inverted
residuals whose `conv` Sequential always starts with a pointwise expansion (even when t = 1), a 1x1
`conv2` to 1280 channels, a global average pool (AvgPool2d(2, ceil_mode) on the 2x2 map) and
`classifier.0`.

Feature taps: f0 = stem output, f1..f4 = outputs of stages 1, 2, 4 and 6. Those are linear BN outputs
(no ReLU follows them), so `preact_feats` equals `feats` (the reference has no separate preact list).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from kdjax.models import backbone, layers
from kdjax.models.registry import register

# The reference draws convs from N(0, 2 / (k * k * out_channels)), sets BN to 1 / 0 and draws the
# Linear weight from N(0, 0.01) with zero bias.
_CONV_INIT = layers.kaiming_normal_fan_out
_LINEAR_INIT = nn.initializers.normal(stddev=0.01)

# (expansion t, channels c, repeats n, first stride s) before the width multiplier; t = 0 means "T".
_SETTINGS = ((1, 16, 1, 1), (0, 24, 2, 1), (0, 32, 3, 2), (0, 64, 4, 2), (0, 96, 3, 1),
             (0, 160, 3, 2), (0, 320, 1, 1))
_TAPPED_STAGES = (1, 2, 4, 6)  # stages whose outputs are f1..f4


class ConvBNReLU(nn.Module):
  """`Sequential(Conv2d, BatchNorm2d, ReLU)` with children '0' and '1' (the reference's conv_bn)."""
  features: int
  kernel: int
  stride: int = 1
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = layers.conv(self.features, self.kernel, stride=self.stride, kernel_init=_CONV_INIT,
                    name="0", dtype=self.dtype)(x)
    return nn.relu(layers.batch_norm(train, name="1", dtype=self.dtype)(x))


class InvertedResidualConv(nn.Module):
  """The block's `conv` Sequential: pw (0, 1), ReLU, dw 3x3 (3, 4), ReLU, pw-linear (6, 7)."""
  hidden: int
  out_planes: int
  stride: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = layers.conv(self.hidden, 1, kernel_init=_CONV_INIT, name="0", dtype=self.dtype)(x)
    x = nn.relu(layers.batch_norm(train, name="1", dtype=self.dtype)(x))
    x = layers.conv(self.hidden, 3, stride=self.stride, groups=self.hidden, kernel_init=_CONV_INIT,
                    name="3", dtype=self.dtype)(x)
    x = nn.relu(layers.batch_norm(train, name="4", dtype=self.dtype)(x))
    x = layers.conv(self.out_planes, 1, kernel_init=_CONV_INIT, name="6", dtype=self.dtype)(x)
    return layers.batch_norm(train, name="7", dtype=self.dtype)(x)


class InvertedResidual(nn.Module):
  """Inverted residual; the identity shortcut is used only when stride is 1 and widths match."""
  in_planes: int
  out_planes: int
  stride: int
  expansion: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    out = InvertedResidualConv(self.in_planes * self.expansion, self.out_planes, self.stride,
                               name="conv", dtype=self.dtype)(x, train)
    if self.stride == 1 and self.in_planes == self.out_planes:
      return x + out
    return out


class MobileStage(nn.Module):
  """`blocks.{s}`: a Sequential of inverted residuals named '0', '1', ...; stride on the first."""
  in_planes: int
  out_planes: int
  num_blocks: int
  stride: int
  expansion: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    in_planes = self.in_planes
    for j in range(self.num_blocks):
      x = InvertedResidual(in_planes, self.out_planes, self.stride if j == 0 else 1, self.expansion,
                           name=str(j), dtype=self.dtype)(x, train)
      in_planes = self.out_planes
    return x


class MobileBlocks(nn.Module):
  """`blocks` (a ModuleList of the seven stages); returns the final map and the f1..f4 taps."""
  in_planes: int
  expansion: int
  width_mult: float
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               start_stage: int = 0) -> tuple[jax.Array, list[jax.Array]]:
    # start_stage k > 0: `x` is the tap f_k and only the stages after it run.
    first = _TAPPED_STAGES[start_stage - 1] + 1 if start_stage else 0
    taps = []
    in_planes = int(_SETTINGS[first - 1][1] * self.width_mult) if first else self.in_planes
    for s, (t, c, n, stride) in enumerate(_SETTINGS):
      if s < first:
        continue
      out_planes = int(c * self.width_mult)
      x = MobileStage(in_planes, out_planes, n, stride, t or self.expansion, name=str(s),
                      dtype=self.dtype)(x, train)
      in_planes = out_planes
      if s in _TAPPED_STAGES:
        taps.append(x)
    return x, taps


class Classifier(nn.Module):
  """`classifier = Sequential(Linear)`, hence the key `classifier.0`."""
  num_classes: int
  in_features: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return layers.dense(self.num_classes, self.in_features, kernel_init=_LINEAR_INIT,
                        bias_init=nn.initializers.zeros, name="0", dtype=self.dtype)(x)


class MobileNetV2(backbone.Backbone):
  """CIFAR MobileNetV2 with expansion `expansion` (T) and width multiplier `width_mult`."""
  num_classes: int = 100
  expansion: int = 6
  width_mult: float = 0.5
  dtype: Any = None

  num_stages = len(_TAPPED_STAGES)  # class constant (not a field): the f1..f4 taps

  def stem(self, x: jax.Array, train: bool) -> jax.Array:
    return ConvBNReLU(int(32 * self.width_mult), 3, stride=2, name="conv1", dtype=self.dtype)(x, train)

  def run_stages(self, x: jax.Array, train: bool, start: int) -> tuple[jax.Array, list, list]:
    # The seven inverted-residual stages live in one `blocks` list whose outputs 1, 2, 4, 6 are
    # the taps f1..f4, so they run as one module rather than stage by stage.
    f0 = x
    x, taps = MobileBlocks(int(32 * self.width_mult), self.expansion, self.width_mult, name="blocks",
                           dtype=self.dtype)(f0, train, start)
    feats = [f0, *taps]
    return x, feats, list(feats)

  def head(self, x: jax.Array, train: bool):
    # The reference widens the last conv only for multipliers above 1.
    last = int(1280 * self.width_mult) if self.width_mult > 1.0 else 1280
    x = ConvBNReLU(last, 1, name="conv2", dtype=self.dtype)(x, train)
    pooled = layers.global_avg_pool(x)  # AvgPool2d(input_size // 16, ceil_mode=True) covers the map
    return Classifier(self.num_classes, last, name="classifier", dtype=self.dtype)(pooled), pooled, None


@register("MobileNetV2")
def mobile_half(num_classes: int = 100, **kwargs: Any) -> MobileNetV2:
  """mdistiller's `mobile_half`: MobileNetV2 with T = 6 and width 0.5."""
  return MobileNetV2(num_classes=num_classes, expansion=6, width_mult=0.5, **kwargs)
