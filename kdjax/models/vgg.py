"""VGG with BatchNorm for CIFAR (vgg8, vgg11, vgg13, vgg16, vgg19 = the reference's `*_bn` variants).

Layer for layer `VGG(cfg, batch_norm=True)` of RepDistiller / mdistiller `models/cifar/vgg.py`: five
Sequentials `block0..block4` of [conv3x3 (with bias), BN, ReLU] with each block's last ReLU applied in
the forward pass, 2x2 max-pools between blocks (`pool3` only for 64-pixel inputs), a global average
pool and a 512 -> classes `classifier`.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax

from kdjax.models import backbone, layers
from kdjax.models.registry import register

# The reference draws convs from N(0, 2 / (k * k * out_channels)) with zero bias, sets BN to 1 / 0 and
# draws the Linear weight from N(0, 0.01) with zero bias.
_CONV_INIT = layers.kaiming_normal_fan_out
_LINEAR_INIT = nn.initializers.normal(stddev=0.01)

CFGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "A": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "B": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "D": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "E": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
    "S": ((64,), (128,), (256,), (512,), (512,)),
}


class VGGBlock(nn.Module):
  """`block{k}`: [conv, BN, ReLU] * len(widths) without the final ReLU; Sequential indices as names."""
  widths: Sequence[int]
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for i, width in enumerate(self.widths):
      if i:
        x = nn.relu(x)  # index 3i - 1 in the Sequential
      x = layers.conv(width, 3, use_bias=True, kernel_init=_CONV_INIT, name=str(3 * i),
                      dtype=self.dtype)(x)
      x = layers.batch_norm(train, name=str(3 * i + 1), dtype=self.dtype)(x)
    return x


class VGG(backbone.Backbone):
  """CIFAR VGG-BN; `cfg` lists the conv widths of the five blocks."""
  cfg: Sequence[Sequence[int]]
  num_classes: int = 100
  dtype: Any = None

  @property
  def num_stages(self) -> int:
    """block1..block4 (block0 is the stem: feats[0] is its output)."""
    return len(self.cfg) - 1

  def stem(self, x: jax.Array, train: bool) -> jax.Array:
    # The reference's preact_feats[0] is the post-ReLU f0, which the contract's default gives.
    return nn.relu(VGGBlock(tuple(self.cfg[0]), name="block0", dtype=self.dtype)(x, train))

  def stage(self, k: int, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    # pool0..pool2 always; pool3 only for 64-pixel inputs (f3 at 8x8), so on CIFAR block4 runs at 4x4.
    if k != 4 or x.shape[1] == 8:
      x = layers.max_pool_2x2(x)
    pre = VGGBlock(tuple(self.cfg[k]), name=f"block{k}", dtype=self.dtype)(x, train)
    return nn.relu(pre), pre

  def head(self, x: jax.Array, train: bool):
    pooled = layers.global_avg_pool(x)  # pool4 = AdaptiveAvgPool2d(1)
    logits = layers.dense(self.num_classes, self.cfg[-1][-1], kernel_init=_LINEAR_INIT,
                          bias_init=nn.initializers.zeros, name="classifier", dtype=self.dtype)(pooled)
    return logits, pooled, None


def _factory(cfg_name: str):
  def make(num_classes: int = 100, **kwargs: Any) -> VGG:
    return VGG(cfg=CFGS[cfg_name], num_classes=num_classes, **kwargs)
  make.__doc__ = f"VGG-BN with configuration {cfg_name!r}."
  return make


for _name, _cfg in [("vgg8", "S"), ("vgg11", "A"), ("vgg13", "B"), ("vgg16", "D"), ("vgg19", "E")]:
  register(_name)(_factory(_cfg))

del _name, _cfg
