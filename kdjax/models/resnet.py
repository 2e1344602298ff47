"""CIFAR ResNet with BasicBlocks (resnet8 ... resnet110, resnet8x4, resnet32x4).

Layer for layer the `ResNet(depth, num_filters, 'basicblock')` of RepDistiller / mdistiller
`models/cifar/resnet.py`: a 3x3 stem, three stages of (depth - 2) / 6 BasicBlocks, global average
pooling (AvgPool2d(8) on the 8x8 map) and a linear `fc`.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax

from kdjax.models import register
from kdjax.models import layers

# The reference re-initialises every Conv2d with kaiming_normal(fan_out, relu) and every BN with
# weight 1 / bias 0; the Linear head keeps PyTorch's default init.
_CONV_INIT = layers.kaiming_normal_fan_out


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN plus shortcut; returns `(relu(out), out)` so stages can tap preact."""
  planes: int
  stride: int = 1
  downsample: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    out = layers.conv(self.planes, 3, stride=self.stride, kernel_init=_CONV_INIT,
                      name="conv1", dtype=self.dtype)(x)
    out = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(out))
    out = layers.conv(self.planes, 3, kernel_init=_CONV_INIT, name="conv2", dtype=self.dtype)(out)
    out = layers.batch_norm(train, name="bn2", dtype=self.dtype)(out)
    residual = x
    if self.downsample:
      residual = layers.ConvBN(self.planes, 1, stride=self.stride, kernel_init=_CONV_INIT,
                               name="downsample", dtype=self.dtype)(x, train)
    preact = out + residual
    return nn.relu(preact), preact


class ResStage(nn.Module):
  """`layer{k}`: a Sequential of BasicBlocks named '0', '1', ...; returns (output, pre-ReLU output)."""
  planes: int
  num_blocks: int
  stride: int
  in_planes: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    # Projection shortcut only where the reference's _make_layer builds one (block 0).
    needs_proj = self.stride != 1 or self.in_planes != self.planes
    preact = x
    for i in range(self.num_blocks):
      x, preact = BasicBlock(self.planes, stride=self.stride if i == 0 else 1,
                             downsample=needs_proj and i == 0, name=str(i),
                             dtype=self.dtype)(x, train)
    return x, preact


class ResNet(nn.Module):
  """CIFAR ResNet of BasicBlocks; `num_filters` = [stem, stage1, stage2, stage3] widths."""
  depth: int
  num_filters: Sequence[int]
  num_classes: int = 100
  dtype: Any = None

  num_stages = 3  # class constant (not a field): layer1..layer3

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               start_stage: Optional[int] = None) -> tuple[jax.Array, dict[str, Any]]:
    if (self.depth - 2) % 6:
      raise ValueError(f"BasicBlock ResNet depth must be 6n + 2, got {self.depth}")
    n = (self.depth - 2) // 6
    # start_stage s: `x` is feats[s] (the output of stage s, 0 = stem) and only later stages run.
    start = 0 if start_stage is None else start_stage
    if not 0 <= start <= self.num_stages:
      raise ValueError(f"start_stage must be in [0, {self.num_stages}], got {start_stage}")
    if start_stage is None:
      x = layers.conv(self.num_filters[0], 3, kernel_init=_CONV_INIT, name="conv1", dtype=self.dtype)(x)
      x = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(x))
    feats, preacts = [x], [x]  # mdistiller: preact_feats[0] is the post-ReLU stem, like feats[0].
    in_planes = self.num_filters[start]
    for k, (planes, stride) in enumerate(zip(self.num_filters[1:], (1, 2, 2)), start=1):
      if k <= start:
        continue
      x, pre = ResStage(planes, n, stride, in_planes, name=f"layer{k}", dtype=self.dtype)(x, train)
      feats.append(x)
      preacts.append(pre)
      in_planes = planes
    pooled = layers.global_avg_pool(x)  # AvgPool2d(8) on the final 8x8 map.
    logits = layers.dense(self.num_classes, in_planes, name="fc", dtype=self.dtype)(pooled)
    return logits, {"feats": tuple(feats), "preact_feats": tuple(preacts), "pooled": pooled}

  def from_stage(self, h: jax.Array, stage: int, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """Stages `stage + 1 ..` and the head on `h` = `feats[stage]` (0: the stem output)."""
    return self(h, train, start_stage=stage)


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
