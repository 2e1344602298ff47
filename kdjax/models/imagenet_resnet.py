"""ImageNet ResNet-18/34/50 in torchvision's layout (`imagenet_resnet18/34/50`).

Layer for layer torchvision's `resnet18/34/50` (= mdistiller `models/imagenet/resnet.py`), so the
torchvision checkpoints the ImageNet teachers use (`resnet34-333f7ec4.pth`, `resnet50-19c8e357.pth`)
import by the generic key rule: a 7x7 stride-2 stem `conv1` (padding 3) / `bn1`, ReLU, a 3x3
stride-2 max-pool (padding 1), four stages `layer{1..4}` (BasicBlock, or Bottleneck with the stride
on its 3x3 `conv2` = "v1.5"), projection shortcuts `downsample.{0,1}`, a global average pool and `fc`.

Features follow mdistiller's ImageNet ResNet: f0 is the stem *before* the max-pool, `feats[0]` =
relu(bn1(conv1(x))) and `preact_feats[0]` = bn1(conv1(x)) (pre-ReLU, unlike the CIFAR ResNet whose
preact f0 is post-ReLU); f1..f4 are the stage outputs after / before the last block's ReLU.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax

from kdjax.models import layers, residual
from kdjax.models.registry import register

# torchvision re-initialises every Conv2d with kaiming_normal(fan_out, relu) and every BN with
# weight 1 / bias 0 (zero_init_residual is off by default); `fc` keeps nn.Linear's default init.
_CONV_INIT = layers.kaiming_normal_fan_out
_WIDTHS = (64, 128, 256, 512)
_STRIDES = (1, 2, 2, 2)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """PyTorch `MaxPool2d(3, stride=2, padding=1)`: Flax pads a max-pool with -inf, like PyTorch."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class ImageNetResNet(nn.Module):
  """torchvision's ResNet: `block` (BasicBlock / Bottleneck) with `num_blocks` per stage."""
  block: Any
  num_blocks: Sequence[int]
  num_classes: int = 1000
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    x = layers.conv(64, 7, stride=2, padding=3, kernel_init=_CONV_INIT, name="conv1",
                    dtype=self.dtype)(x)
    stem = layers.batch_norm(train, name="bn1", dtype=self.dtype)(x)
    x = nn.relu(stem)
    feats, preacts = [x], [stem]  # mdistiller taps the stem before the max-pool
    x = max_pool_3x3_s2(x)
    in_planes = 64
    for k, (planes, n, stride) in enumerate(zip(_WIDTHS, self.num_blocks, _STRIDES), start=1):
      x, pre = residual.Stage(self.block, in_planes, planes, n, stride, name=f"layer{k}",
                     dtype=self.dtype)(x, train)
      feats.append(x)
      preacts.append(pre)
      in_planes = planes * self.block.expansion
    # torchvision's AdaptiveAvgPool2d(1); mdistiller's AvgPool2d(7, stride=1) is the same on the
    # 7x7 map of a 224-pixel input, and the global mean also serves other input sizes.
    pooled = layers.global_avg_pool(x)
    logits = layers.dense(self.num_classes, in_planes, name="fc", dtype=self.dtype)(pooled)
    return logits, {"feats": tuple(feats), "preact_feats": tuple(preacts), "pooled": pooled}


def _factory(block: Any, num_blocks: Sequence[int], depth: int):
  def make(num_classes: int = 1000, **kwargs: Any) -> ImageNetResNet:
    return ImageNetResNet(block=block, num_blocks=tuple(num_blocks), num_classes=num_classes, **kwargs)
  make.__doc__ = f"torchvision's ResNet-{depth} ({block.__name__}s {tuple(num_blocks)})."
  return make


for _depth, _block, _blocks in [(18, residual.BasicBlock, (2, 2, 2, 2)),
                                (34, residual.BasicBlock, (3, 4, 6, 3)),
                                (50, residual.Bottleneck, (3, 4, 6, 3))]:
  register(f"imagenet_resnet{_depth}")(_factory(_block, _blocks, _depth))

del _depth, _block, _blocks
