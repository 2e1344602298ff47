"""CIFAR ResNet with BasicBlocks (resnet8 ... resnet110, resnet8x4, resnet32x4).

Layer for layer the `ResNet(depth, num_filters, 'basicblock')` of RepDistiller / mdistiller
`models/cifar/resnet.py`: a 3x3 stem, three stages of (depth - 2) / 6 BasicBlocks, global average
pooling (AvgPool2d(8) on the 8x8 map) and a linear `fc`.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax

from kdjax.models import backbone, layers, residual
from kdjax.models.registry import register

# The reference re-initialises every Conv2d with kaiming_normal(fan_out, relu) and every BN with
# weight 1 / bias 0; the Linear head keeps PyTorch's default init.
_CONV_INIT = layers.kaiming_normal_fan_out


class ResNet(backbone.Backbone):
  """CIFAR ResNet of BasicBlocks; `num_filters` = [stem, stage1, stage2, stage3] widths."""
  depth: int
  num_filters: Sequence[int]
  num_classes: int = 100
  dtype: Any = None

  num_stages = 3  # class constant (not a field): layer1..layer3

  def stem(self, x: jax.Array, train: bool) -> jax.Array:
    x = layers.conv(self.num_filters[0], 3, kernel_init=_CONV_INIT, name="conv1", dtype=self.dtype)(x)
    return nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(x))

  def stage(self, k: int, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    if (self.depth - 2) % 6:
      raise ValueError(f"BasicBlock ResNet depth must be 6n + 2, got {self.depth}")
    return residual.Stage(residual.BasicBlock, self.num_filters[k - 1], self.num_filters[k],
                          (self.depth - 2) // 6, 1 if k == 1 else 2, name=f"layer{k}",
                          dtype=self.dtype)(x, train)

  def head(self, x: jax.Array, train: bool):
    pooled = layers.global_avg_pool(x)  # AvgPool2d(8) on the final 8x8 map.
    return layers.dense(self.num_classes, self.num_filters[-1], name="fc", dtype=self.dtype)(pooled), pooled, None


_SMALL = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def _factory(depth: int, num_filters: Sequence[int]):
  def make(num_classes: int = 100, **kwargs: Any) -> ResNet:
    return ResNet(depth=depth, num_filters=tuple(num_filters), num_classes=num_classes, **kwargs)
  make.__doc__ = f"CIFAR ResNet-{depth} with widths {tuple(num_filters)}."
  return make


for _name, _depth, _filters in [("resnet8", 8, _SMALL), ("resnet14", 14, _SMALL),
                                ("resnet20", 20, _SMALL), ("resnet32", 32, _SMALL),
                                ("resnet44", 44, _SMALL), ("resnet56", 56, _SMALL),
                                ("resnet110", 110, _SMALL), ("resnet8x4", 8, _WIDE),
                                ("resnet32x4", 32, _WIDE)]:
  register(_name)(_factory(_depth, _filters))

del _name, _depth, _filters
