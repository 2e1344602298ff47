"""Residual blocks and stages shared by the CIFAR ResNets, the CIFAR ResNet-50 and torchvision's ResNets.

A block returns `(relu(out), out)` so that a stage can tap its pre-ReLU output. The
projection shortcut (1x1 conv + BN, children '0'/'1') exists exactly where the
references build one, the first block of a stage whose stride or width changes,
under the family's name (`downsample`, or `shortcut` in the CIFAR ResNet-50).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from kdjax.models import layers

# Every family that uses these blocks re-initialises its convs with kaiming_normal(fan_out, relu).
_CONV_INIT = layers.kaiming_normal_fan_out


def _shortcut(x: jax.Array, in_planes: int, out_planes: int, stride: int, train: bool, name: str,
              dtype: Any) -> jax.Array:
  """Identity, or the projection `name` (created after the residual branch, as the references do)."""
  if stride == 1 and in_planes == out_planes:
    return x
  return layers.ConvBN(out_planes, 1, stride=stride, kernel_init=_CONV_INIT, name=name,
                       dtype=dtype)(x, train)


class BasicBlock(nn.Module):
  """conv3x3 (strided) - BN - ReLU - conv3x3 - BN plus shortcut."""
  in_planes: int
  planes: int
  stride: int = 1
  shortcut_name: str = "downsample"
  dtype: Any = None

  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    out = layers.conv(self.planes, 3, stride=self.stride, kernel_init=_CONV_INIT, name="conv1",
                      dtype=self.dtype)(x)
    out = nn.relu(layers.batch_norm(train, name="bn1", dtype=self.dtype)(out))
    out = layers.conv(self.planes, 3, kernel_init=_CONV_INIT, name="conv2", dtype=self.dtype)(out)
    out = layers.batch_norm(train, name="bn2", dtype=self.dtype)(out)
    preact = out + _shortcut(x, self.in_planes, self.planes, self.stride, train, self.shortcut_name,
                             self.dtype)
    return nn.relu(preact), preact


class Bottleneck(nn.Module):
  """1x1 - 3x3 (strided, torchvision's v1.5) - 1x1 (x4) plus shortcut."""
  in_planes: int
  planes: int
  stride: int = 1
  shortcut_name: str = "downsample"
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
    preact = out + _shortcut(x, self.in_planes, self.planes * 4, self.stride, train,
                             self.shortcut_name, self.dtype)
    return nn.relu(preact), preact


class Stage(nn.Module):
  """`layer{k}`: blocks named '0', '1', ...; stride on block 0; returns (output, last block's preact)."""
  block: Any  # BasicBlock or Bottleneck (the class)
  in_planes: int
  planes: int
  num_blocks: int
  stride: int
  shortcut_name: str = "downsample"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    preact = x
    in_planes = self.in_planes
    for i in range(self.num_blocks):
      x, preact = self.block(in_planes, self.planes, self.stride if i == 0 else 1, self.shortcut_name,
                             name=str(i), dtype=self.dtype)(x, train)
      in_planes = self.planes * self.block.expansion
    return x, preact
