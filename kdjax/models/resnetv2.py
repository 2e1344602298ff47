"""The CIFAR bottleneck ResNet-50 teacher, registered as `ResNet50`.

Layer for layer `ResNet(Bottleneck, [3, 4, 6, 3])` of RepDistiller / mdistiller
`models/cifar/resnetv2.py`: a 3x3 stride-1 stem `conv1`/`bn1` (64 channels, no max-pool), four stages
`layer{1..4}` of bottlenecks (stride on the 3x3 `conv2`, projection `shortcut.{0,1}`), a global
average pool and `linear`.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax

from kdjax.models import register
from kdjax.models import layers

# The reference re-initialises every Conv2d with kaiming_normal(fan_out, relu) and every BN with
# weight 1 / bias 0 (zero_init_residual off); the Linear head keeps PyTorch's default init.
_CONV_INIT = layers.kaiming_normal_fan_out
_EXPANSION = 4


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 (x4) plus shortcut; returns `(relu(out), out)`."""
  in_planes: int
  planes: int
  stride: int = 1
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    out_planes = self.planes * _EXPANSION
    out = layers.conv(self.planes, 1, kernel_init=_CONV_INIT, name="conv1", dtype=self.dtype)(x)
    out = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(out))
    out = layers.conv(self.planes, 3, stride=self.stride, kernel_init=_CONV_INIT, name="conv2",
                      dtype=self.dtype)(out)
    out = nn.relu(layers.batch_norm(train, name="bn2", dtype=self.dtype)(out))
    out = layers.conv(out_planes, 1, kernel_init=_CONV_INIT, name="conv3", dtype=self.dtype)(out)
    out = layers.batch_norm(train, name="bn3", dtype=self.dtype)(out)
    shortcut = x
    if self.stride != 1 or self.in_planes != out_planes:
      shortcut = layers.ConvBN(out_planes, 1, stride=self.stride, kernel_init=_CONV_INIT,
                               name="shortcut", dtype=self.dtype)(x, train)
    preact = out + shortcut
    return nn.relu(preact), preact


class BottleneckStage(nn.Module):
  """`layer{k}`: bottlenecks named '0', '1', ...; stride on block 0; returns (out, last preact)."""
  in_planes: int
  planes: int
  num_blocks: int
  stride: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    preact = x
    in_planes = self.in_planes
    for i in range(self.num_blocks):
      x, preact = Bottleneck(in_planes, self.planes, self.stride if i == 0 else 1, name=str(i),
                             dtype=self.dtype)(x, train)
      in_planes = self.planes * _EXPANSION
    return x, preact


class ResNetV2(nn.Module):
  """CIFAR bottleneck ResNet with `num_blocks` blocks in its four stages (64..512 planes, x4 out)."""
  num_blocks: Sequence[int] = (3, 4, 6, 3)
  num_classes: int = 100
  dtype: Any = None

  num_stages = 4  # class constant (not a field): layer1..layer4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               start_stage: Optional[int] = None) -> tuple[jax.Array, dict[str, Any]]:
    # start_stage s: `x` is feats[s] (the output of stage s, 0 = stem) and only later stages run.
    start = 0 if start_stage is None else start_stage
    if not 0 <= start <= self.num_stages:
      raise ValueError(f"start_stage must be in [0, {self.num_stages}], got {start_stage}")
    if start_stage is None:
      x = layers.conv(64, 3, kernel_init=_CONV_INIT, name="conv1", dtype=self.dtype)(x)
      x = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(x))
    feats, preacts = [x], [x]
    in_planes = 64 if start == 0 else (64, 128, 256, 512)[start - 1] * _EXPANSION
    for k, (planes, n, stride) in enumerate(zip((64, 128, 256, 512), self.num_blocks, (1, 2, 2, 2)),
                                            start=1):
      if k <= start:
        continue
      x, pre = BottleneckStage(in_planes, planes, n, stride, name=f"layer{k}", dtype=self.dtype)(x, train)
      feats.append(x)
      preacts.append(pre)
      in_planes = planes * _EXPANSION
    pooled = layers.global_avg_pool(x)  # AdaptiveAvgPool2d(1)
    logits = layers.dense(self.num_classes, in_planes, name="linear", dtype=self.dtype)(pooled)
    return logits, {"feats": tuple(feats), "preact_feats": tuple(preacts), "pooled": pooled}

  def from_stage(self, h: jax.Array, stage: int, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """Stages `stage + 1 ..` and the head on `h` = `feats[stage]` (0: the stem output)."""
    return self(h, train, start_stage=stage)


@register("ResNet50")
def resnet50(num_classes: int = 100, **kwargs: Any) -> ResNetV2:
  """mdistiller's CIFAR `ResNet50`: bottleneck blocks (3, 4, 6, 3)."""
  return ResNetV2(num_classes=num_classes, **kwargs)
