"""ImageNet MobileNetV1 (width 1.0) in mdistiller's layout (`imagenet_mobilenetv1`).

Layer for layer mdistiller `models/imagenet/mobilenetv1.py` (the R50 -> MV1 student of the CRD /
DKD ImageNet tables): `model.0` = conv3x3(3 -> 32, stride 2) / BN / ReLU, `model.1..13` =
depthwise-separable blocks (`.0` depthwise 3x3, `.1` BN, ReLU, `.3` pointwise 1x1, `.4` BN, ReLU),
a global average pool (`model.14`, no parameters) and `fc` [num_classes, 1024].

Features. mdistiller taps the outputs of `model.3`, `model.5`, `model.11` and `model.13` (128, 256,
512 and 1024 channels; pre-ReLU = the block's last BN output) and has no stem tap. kdjax's contract
puts the stem first, so `feats` = (f0, f1, f2, f3, f4) with f0 = the output of `model.0` (post-ReLU;
preact = its BN output): `feats[1:]` is exactly mdistiller's `feats`, which is what the feature
methods read.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from kdjax.models.registry import register
from kdjax.models import layers

# mdistiller's MobileNetV1 keeps PyTorch's default init everywhere (kaiming_uniform(a=sqrt(5)) for
# Conv2d/Linear, BN weight 1 / bias 0): no re-initialisation loop, unlike torchvision's ResNets.
_CONV_INIT = layers.torch_default_kernel_init

# (output channels, stride) of model.1 .. model.13.
_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
           (512, 1), (512, 1), (1024, 2), (1024, 1))
_TAPS = (3, 5, 11, 13)  # blocks whose outputs are mdistiller's feats (ends of the 4 stages)


class ConvBNReLU(nn.Module):
  """mdistiller's `conv_bn`: Sequential(conv3x3, BN, ReLU) as '0', '1'; returns `(out, preact)`."""
  features: int
  stride: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    x = layers.conv(self.features, 3, stride=self.stride, kernel_init=_CONV_INIT, name="0",
                    dtype=self.dtype)(x)
    pre = layers.batch_norm(train, name="1", dtype=self.dtype)(x)
    return nn.relu(pre), pre


class DepthwiseSeparable(nn.Module):
  """mdistiller's `conv_dw`: depthwise 3x3 '0', BN '1', ReLU, pointwise 1x1 '3', BN '4', ReLU."""
  features: int
  stride: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    c = x.shape[-1]
    x = layers.conv(c, 3, stride=self.stride, groups=c, kernel_init=_CONV_INIT, name="0",
                    dtype=self.dtype)(x)
    x = nn.relu(layers.batch_norm(train, name="1", dtype=self.dtype)(x))
    x = layers.conv(self.features, 1, kernel_init=_CONV_INIT, name="3", dtype=self.dtype)(x)
    pre = layers.batch_norm(train, name="4", dtype=self.dtype)(x)
    return nn.relu(pre), pre


class Body(nn.Module):
  """mdistiller's `model` Sequential (blocks '0'..'13'); returns (output, feats, preact_feats)."""
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    x, pre = ConvBNReLU(32, 2, name="0", dtype=self.dtype)(x, train)
    feats, preacts = [x], [pre]
    for i, (features, stride) in enumerate(_BLOCKS, start=1):
      x, pre = DepthwiseSeparable(features, stride, name=str(i), dtype=self.dtype)(x, train)
      if i in _TAPS:
        feats.append(x)
        preacts.append(pre)
    return x, tuple(feats), tuple(preacts)


class MobileNetV1(nn.Module):
  """MobileNetV1 1.0: `model` (14 conv blocks), global average pool, `fc`."""
  num_classes: int = 1000
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    x, feats, preacts = Body(name="model", dtype=self.dtype)(x, train)
    # mdistiller's AvgPool2d(7) is the global mean on the 7x7 map of a 224-pixel input (at other
    # sizes it is not global, or fails); the global mean keeps the model usable at any size.
    pooled = layers.global_avg_pool(x)
    logits = layers.dense(self.num_classes, _BLOCKS[-1][0], name="fc", dtype=self.dtype)(pooled)
    return logits, {"feats": feats, "preact_feats": preacts, "pooled": pooled}


@register("imagenet_mobilenetv1")
def imagenet_mobilenetv1(num_classes: int = 1000, **kwargs: Any) -> MobileNetV1:
  """mdistiller's ImageNet MobileNetV1 (width 1.0)."""
  return MobileNetV1(num_classes=num_classes, **kwargs)
