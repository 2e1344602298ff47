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

from kdjax.models import register
from kdjax.models import layers

# torchvision re-initialises every Conv2d with kaiming_normal(fan_out, relu) and every BN with
# weight 1 / bias 0 (zero_init_residual is off by default); `fc` keeps nn.Linear's default init.
_CONV_INIT = layers.kaiming_normal_fan_out
_WIDTHS = (64, 128, 256, 512)
_STRIDES = (1, 2, 2, 2)


class BasicBlock(nn.Module):
  """conv3x3 (strided) - BN - ReLU - conv3x3 - BN plus shortcut; returns `(relu(out), out)`."""
  in_planes: int
  planes: int
  stride: int = 1
  dtype: Any = None

  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    out = layers.conv(self.planes, 3, stride=self.stride, kernel_init=_CONV_INIT, name="conv1",
                      dtype=self.dtype)(x)
    out = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(out))
    out = layers.conv(self.planes, 3, kernel_init=_CONV_INIT, name="conv2", dtype=self.dtype)(out)
    out = layers.batch_norm(train, name="bn2", dtype=self.dtype)(out)
    preact = out + _shortcut(x, self.in_planes, self.planes, self.stride, train, self.dtype)
    return nn.relu(preact), preact


class Bottleneck(nn.Module):
  """1x1 - 3x3 (strided, torchvision's v1.5) - 1x1 (x4) plus shortcut; returns `(relu(out), out)`."""
  in_planes: int
  planes: int
  stride: int = 1
  dtype: Any = None

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    out = layers.conv(self.planes, 1, kernel_init=_CONV_INIT, name="conv1", dtype=self.dtype)(x)
    out = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(out))
    out = layers.conv(self.planes, 3, stride=self.stride, kernel_init=_CONV_INIT, name="conv2",
                      dtype=self.dtype)(out)
    out = nn.relu(layers.batch_norm(train, name="bn2", dtype=self.dtype)(out))
    out = layers.conv(self.planes * 4, 1, kernel_init=_CONV_INIT, name="conv3", dtype=self.dtype)(out)
    out = layers.batch_norm(train, name="bn3", dtype=self.dtype)(out)
    preact = out + _shortcut(x, self.in_planes, self.planes * 4, self.stride, train, self.dtype)
    return nn.relu(preact), preact


def _shortcut(x: jax.Array, in_planes: int, out_planes: int, stride: int, train: bool,
              dtype: Any) -> jax.Array:
  """Identity, or `downsample` = 1x1 conv + BN where torchvision's _make_layer builds one.

  Called inside the block's compact `__call__`, so the ConvBN is the block's child 'downsample',
  created after the residual branch as in torchvision's registration order.
  """
  if stride == 1 and in_planes == out_planes:
    return x
  return layers.ConvBN(out_planes, 1, stride=stride, kernel_init=_CONV_INIT, name="downsample",
                       dtype=dtype)(x, train)


class Stage(nn.Module):
  """`layer{k}`: blocks named '0', '1', ...; stride on block 0; returns (output, last preact)."""
  block: Any  # BasicBlock or Bottleneck (the class)
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
      x, preact = self.block(in_planes, self.planes, self.stride if i == 0 else 1, name=str(i),
                             dtype=self.dtype)(x, train)
      in_planes = self.planes * self.block.expansion
    return x, preact


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
      x, pre = Stage(self.block, in_planes, planes, n, stride, name=f"layer{k}",
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


for _depth, _block, _blocks in [(18, BasicBlock, (2, 2, 2, 2)), (34, BasicBlock, (3, 4, 6, 3)),
                                (50, Bottleneck, (3, 4, 6, 3))]:
  register(f"imagenet_resnet{_depth}")(_factory(_block, _blocks, _depth))

del _depth, _block, _blocks
