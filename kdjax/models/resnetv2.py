"""The CIFAR bottleneck ResNet-50 teacher, registered as `ResNet50`.

Layer for layer `ResNet(Bottleneck, [3, 4, 6, 3])` of RepDistiller / mdistiller
`models/cifar/resnetv2.py`: a 3x3 stride-1 stem `conv1`/`bn1` (64 channels, no max-pool), four stages
`layer{1..4}` of bottlenecks (stride on the 3x3 `conv2`, projection `shortcut.{0,1}`), a global
average pool and `linear`.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax

from kdjax.models import backbone, layers, residual
from kdjax.models.registry import register

# The reference re-initialises every Conv2d with kaiming_normal(fan_out, relu) and every BN with
# weight 1 / bias 0 (zero_init_residual off); the Linear head keeps PyTorch's default init.
_CONV_INIT = layers.kaiming_normal_fan_out
_PLANES = (64, 128, 256, 512)


class ResNetV2(backbone.Backbone):
  """CIFAR bottleneck ResNet with `num_blocks` blocks in its four stages (64..512 planes, x4 out)."""
  num_blocks: Sequence[int] = (3, 4, 6, 3)
  num_classes: int = 100
  dtype: Any = None

  num_stages = 4  # class constant (not a field): layer1..layer4

  def stem(self, x: jax.Array, train: bool) -> jax.Array:
    x = layers.conv(64, 3, kernel_init=_CONV_INIT, name="conv1", dtype=self.dtype)(x)
    return nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(x))

  def stage(self, k: int, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    in_planes = 64 if k == 1 else _PLANES[k - 2] * residual.Bottleneck.expansion
    return residual.Stage(residual.Bottleneck, in_planes, _PLANES[k - 1], self.num_blocks[k - 1],
                          1 if k == 1 else 2, shortcut_name="shortcut", name=f"layer{k}",
                          dtype=self.dtype)(x, train)

  def head(self, x: jax.Array, train: bool):
    pooled = layers.global_avg_pool(x)  # AdaptiveAvgPool2d(1)
    logits = layers.dense(self.num_classes, _PLANES[-1] * residual.Bottleneck.expansion, name="linear",
                          dtype=self.dtype)(pooled)
    return logits, pooled, None


@register("ResNet50")
def resnet50(num_classes: int = 100, **kwargs: Any) -> ResNetV2:
  """mdistiller's CIFAR `ResNet50`: bottleneck blocks (3, 4, 6, 3)."""
  return ResNetV2(num_classes=num_classes, **kwargs)
