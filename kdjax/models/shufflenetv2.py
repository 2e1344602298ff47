"""ShuffleNetV2 for CIFAR, registered as `ShuffleV2` (net size 1: widths 116/232/464/1024, blocks 3/7/3).

Layer for layer `ShuffleNetV2(net_size=1)` of RepDistiller / mdistiller `models/cifar/ShuffleNetv2.py`:
a 1x1 stem `conv1`/`bn1` (3 -> 24), three stages `layer{1,2,3}` = one stride-2 DownBlock ('0') plus
n split BasicBlocks, a 1x1 `conv2`/`bn2` to 1024 channels, a global average pool (avg_pool2d(4) on the
4x4 map) and `linear`.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.models import backbone, layers
from kdjax.models.registry import register

# The reference keeps PyTorch's default Conv2d / BatchNorm2d / Linear init (no re-initialisation),
# which is what layers.conv / layers.batch_norm / layers.dense default to.


class BasicBlock(nn.Module):
  """Split block (ratio 0.5): the first half passes through, the second goes through the branch."""
  channels: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    c = self.channels // 2
    x1, x2 = x[..., :c], x[..., c:]
    out = layers.conv(c, 1, name="conv1", dtype=self.dtype)(x2)
    out = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(out))
    out = layers.conv(c, 3, groups=c, name="conv2", dtype=self.dtype)(out)
    out = layers.batch_norm(train, name="bn2", dtype=self.dtype)(out)
    out = layers.conv(c, 1, name="conv3", dtype=self.dtype)(out)
    pre = layers.batch_norm(train, name="bn3", dtype=self.dtype)(out)
    out = layers.channel_shuffle(jnp.concatenate([x1, nn.relu(pre)], axis=-1), 2)
    # As in the reference, the tapped preact is the concatenation *before* the channel shuffle.
    return out, jnp.concatenate([x1, pre], axis=-1)


class DownBlock(nn.Module):
  """Stride-2 block: depthwise+pointwise left branch, pointwise+depthwise+pointwise right, shuffle."""
  in_channels: int
  out_channels: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    mid = self.out_channels // 2

    def bn(name: str) -> layers.BatchNorm:
      return layers.batch_norm(train, name=name, dtype=self.dtype)

    left = bn("bn1")(layers.conv(self.in_channels, 3, stride=2, groups=self.in_channels,
                                 name="conv1", dtype=self.dtype)(x))
    left = nn.relu(bn("bn2")(layers.conv(mid, 1, name="conv2", dtype=self.dtype)(left)))
    right = nn.relu(bn("bn3")(layers.conv(mid, 1, name="conv3", dtype=self.dtype)(x)))
    right = bn("bn4")(layers.conv(mid, 3, stride=2, groups=mid, name="conv4", dtype=self.dtype)(right))
    right = nn.relu(bn("bn5")(layers.conv(mid, 1, name="conv5", dtype=self.dtype)(right)))
    return layers.channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleV2Stage(nn.Module):
  """`layer{k}`: DownBlock '0' then BasicBlocks '1'..'n'; returns (output, last block's preact)."""
  in_channels: int
  out_channels: int
  num_blocks: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    x = DownBlock(self.in_channels, self.out_channels, name="0", dtype=self.dtype)(x, train)
    preact = x
    for i in range(1, self.num_blocks + 1):
      x, preact = BasicBlock(self.out_channels, name=str(i), dtype=self.dtype)(x, train)
    return x, preact


class ShuffleNetV2(backbone.Backbone):
  """CIFAR ShuffleNetV2; `out_channels` = three stage widths plus the final 1x1 conv width."""
  out_channels: Sequence[int] = (116, 232, 464, 1024)
  num_blocks: Sequence[int] = (3, 7, 3)
  num_classes: int = 100
  dtype: Any = None

  num_stages = 3  # class constant (not a field): layer1..layer3

  def stem(self, x: jax.Array, train: bool) -> jax.Array:
    x = layers.conv(24, 1, name="conv1", dtype=self.dtype)(x)
    return nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(x))

  def stage(self, k: int, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    return ShuffleV2Stage((24, *self.out_channels[:3])[k - 1], self.out_channels[k - 1],
                          self.num_blocks[k - 1], name=f"layer{k}", dtype=self.dtype)(x, train)

  def head(self, x: jax.Array, train: bool):
    last = self.out_channels[3]
    x = layers.conv(last, 1, name="conv2", dtype=self.dtype)(x)
    x = nn.relu(layers.batch_norm(train, name="bn2", dtype=self.dtype)(x))
    pooled = layers.global_avg_pool(x)  # avg_pool2d(4) on the final 4x4 map
    return layers.dense(self.num_classes, last, name="linear", dtype=self.dtype)(pooled), pooled, None


@register("ShuffleV2")
def shuffle_v2(num_classes: int = 100, **kwargs: Any) -> ShuffleNetV2:
  """mdistiller's `ShuffleV2` (net size 1)."""
  return ShuffleNetV2(num_classes=num_classes, **kwargs)
