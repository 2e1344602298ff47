"""ShuffleNetV1 for CIFAR, registered as `ShuffleV1` (out planes 240/480/960, blocks 4/8/4, groups 3).

Layer for layer `ShuffleNet(cfg)` of RepDistiller / mdistiller `models/cifar/ShuffleNetv1.py`: a 1x1
stem `conv1`/`bn1` (3 -> 24, stride 1), three stages `layer{1,2,3}` of grouped bottlenecks whose first
block has stride 2 and concatenates an AvgPool2d(3, 2, 1) shortcut, a global average pool
(avg_pool2d(4) on the 4x4 map) and `linear`.
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


class ShuffleBottleneck(nn.Module):
  """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1; returns `(relu(preact), preact)`."""
  in_planes: int
  out_planes: int  # branch width; a stride-2 block's output adds in_planes by concatenation
  stride: int
  groups: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    mid = self.out_planes // 4
    # The 24-channel stem output is not divisible by 3 groups, so the first conv there is ungrouped.
    g = 1 if self.in_planes == 24 else self.groups
    out = layers.conv(mid, 1, groups=g, name="conv1", dtype=self.dtype)(x)
    out = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(out))
    out = layers.channel_shuffle(out, g)
    out = layers.conv(mid, 3, stride=self.stride, groups=mid, name="conv2", dtype=self.dtype)(out)
    out = nn.relu(layers.batch_norm(train, name="bn2", dtype=self.dtype)(out))
    out = layers.conv(self.out_planes, 1, groups=self.groups, name="conv3", dtype=self.dtype)(out)
    out = layers.batch_norm(train, name="bn3", dtype=self.dtype)(out)
    if self.stride == 2:
      # PyTorch's AvgPool2d(3, 2, 1) divides by 9 even at the borders (count_include_pad=True).
      res = layers.avg_pool(x, 3, 2, padding=1)
      preact = jnp.concatenate([out, res], axis=-1)
    else:
      preact = out + x
    return nn.relu(preact), preact


class ShuffleStage(nn.Module):
  """`layer{k}`: bottlenecks named '0', '1', ...; block 0 has stride 2 and concatenates its input."""
  in_planes: int
  out_planes: int
  num_blocks: int
  groups: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    preact = x
    for i in range(self.num_blocks):
      # Block 0's branch produces out_planes - in_planes channels; the shortcut supplies the rest.
      width = self.out_planes - self.in_planes if i == 0 else self.out_planes
      in_planes = self.in_planes if i == 0 else self.out_planes
      x, preact = ShuffleBottleneck(in_planes, width, 2 if i == 0 else 1, self.groups, name=str(i),
                                    dtype=self.dtype)(x, train)
    return x, preact


class ShuffleNetV1(backbone.Backbone):
  """CIFAR ShuffleNetV1 with stage widths `out_planes` and `num_blocks` blocks per stage."""
  out_planes: Sequence[int] = (240, 480, 960)
  num_blocks: Sequence[int] = (4, 8, 4)
  groups: int = 3
  num_classes: int = 100
  dtype: Any = None

  @property
  def num_stages(self) -> int:
    """layer1..layer3."""
    return len(self.out_planes)

  def stem(self, x: jax.Array, train: bool) -> jax.Array:
    x = layers.conv(24, 1, name="conv1", dtype=self.dtype)(x)
    return nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(x))

  def stage(self, k: int, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    return ShuffleStage((24, *self.out_planes)[k - 1], self.out_planes[k - 1], self.num_blocks[k - 1],
                        self.groups, name=f"layer{k}", dtype=self.dtype)(x, train)

  def head(self, x: jax.Array, train: bool):
    pooled = layers.global_avg_pool(x)  # avg_pool2d(4) on the final 4x4 map
    logits = layers.dense(self.num_classes, self.out_planes[-1], name="linear", dtype=self.dtype)(pooled)
    return logits, pooled, None


@register("ShuffleV1")
def shuffle_v1(num_classes: int = 100, **kwargs: Any) -> ShuffleNetV1:
  """mdistiller's `ShuffleV1`: out planes (240, 480, 960), blocks (4, 8, 4), 3 groups."""
  return ShuffleNetV1(num_classes=num_classes, **kwargs)
