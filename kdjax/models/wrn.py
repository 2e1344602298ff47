"""Pre-activation Wide ResNets for CIFAR (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2).

Layer for layer the `WideResNet(depth, num_classes, widen_factor, dropRate=0)` of RepDistiller /
mdistiller `models/cifar/wrn.py`: a bare 3x3 stem conv (no BN after it), three `NetworkBlock`s
`block{1,2,3}.layer.{i}` of (depth - 4) / 6 pre-activation blocks, a final BN + ReLU, global average
pooling and `fc`.

Feature taps follow the reference: f0 is the raw stem conv and f1..f3 the raw stage outputs; their
"preact" versions are the *next* BatchNorm applied to them without its ReLU
(`block2.layer.0.bn1(f1)`, `block3.layer.0.bn1(f2)`, `bn1(f3)`).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from kdjax.models import backbone, layers
from kdjax.models.registry import register

# The reference draws every conv from N(0, 2 / (k * k * out_channels)) (kaiming fan_out), sets BN to
# weight 1 / bias 0, and zeroes the Linear bias (its weight keeps PyTorch's default init).
_CONV_INIT = layers.kaiming_normal_fan_out


class WideBasicBlock(nn.Module):
  """Pre-activation block BN-ReLU-conv-BN-ReLU-conv; returns `(out, bn1(x))` (the pre-ReLU input BN)."""
  in_planes: int
  out_planes: int
  stride: int = 1
  # Repeat the bn1 call on the same input, as the reference's forward does when it taps
  # `block{2,3}.layer[0].bn1(f)`; in train mode this updates bn1's running stats twice per step.
  repeat_bn1: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    bn1 = layers.batch_norm(train, name="bn1", dtype=self.dtype)
    pre = bn1(x)
    act = nn.relu(pre)
    out = layers.conv(self.out_planes, 3, stride=self.stride, kernel_init=_CONV_INIT,
                      name="conv1", dtype=self.dtype)(act)
    out = nn.relu(layers.batch_norm(train, name="bn2", dtype=self.dtype)(out))
    out = layers.conv(self.out_planes, 3, kernel_init=_CONV_INIT, name="conv2", dtype=self.dtype)(out)
    if self.in_planes == self.out_planes:
      shortcut = x  # identity on the raw input
    else:
      # When the widths differ the reference overwrites x with relu(bn1(x)) and projects that.
      shortcut = layers.conv(self.out_planes, 1, stride=self.stride, padding=0,
                             kernel_init=_CONV_INIT, name="convShortcut", dtype=self.dtype)(act)
    if self.repeat_bn1:
      pre = bn1(x)
    return shortcut + out, pre


class WideLayer(nn.Module):
  """The `layer` Sequential of a NetworkBlock: blocks named '0', '1', ...; returns (out, block-0 preact)."""
  in_planes: int
  out_planes: int
  num_blocks: int
  stride: int
  tap_input_preact: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    x, input_preact = WideBasicBlock(self.in_planes, self.out_planes, self.stride,
                                     repeat_bn1=self.tap_input_preact, name="0",
                                     dtype=self.dtype)(x, train)
    for i in range(1, self.num_blocks):
      x, _ = WideBasicBlock(self.out_planes, self.out_planes, 1, name=str(i), dtype=self.dtype)(x, train)
    return x, input_preact


class NetworkBlock(nn.Module):
  """`block{k}`: holds the `layer` Sequential, as in the reference (its keys read `block2.layer.0...`)."""
  in_planes: int
  out_planes: int
  num_blocks: int
  stride: int
  tap_input_preact: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    return WideLayer(self.in_planes, self.out_planes, self.num_blocks, self.stride,
                     self.tap_input_preact, name="layer", dtype=self.dtype)(x, train)


class WideResNet(backbone.Backbone):
  """Pre-activation WRN-depth-widen_factor for 32x32 inputs (dropout 0)."""
  depth: int
  widen_factor: int
  num_classes: int = 100
  dtype: Any = None

  num_stages = 3  # class constant (not a field): block1..block3
  # Block k's first bn1 is the "preact" of stage k - 1, so blocks 2 and 3 tap their input BN.
  preact_from_next_stage = True

  @property
  def channels(self) -> tuple[int, ...]:
    if (self.depth - 4) % 6:
      raise ValueError(f"WRN depth must be 6n + 4, got {self.depth}")
    k = self.widen_factor
    return (16, 16 * k, 32 * k, 64 * k)

  def stem(self, x: jax.Array, train: bool) -> jax.Array:
    return layers.conv(self.channels[0], 3, kernel_init=_CONV_INIT, name="conv1", dtype=self.dtype)(x)

  def stage(self, k: int, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    # Returns (block output, block k's input BN without ReLU): the previous stage's preact.
    return NetworkBlock(self.channels[k - 1], self.channels[k], (self.depth - 4) // 6, 1 if k == 1 else 2,
                        tap_input_preact=k > 1, name=f"block{k}", dtype=self.dtype)(x, train)

  def head(self, x: jax.Array, train: bool):
    bn1 = layers.batch_norm(train, name="bn1", dtype=self.dtype)
    pooled = layers.global_avg_pool(nn.relu(bn1(x)))  # AvgPool2d(8) on the final 8x8 map.
    last_preact = bn1(x)  # second call, as in the reference (see WideBasicBlock.repeat_bn1)
    logits = layers.dense(self.num_classes, self.channels[3], bias_init=nn.initializers.zeros,
                          name="fc", dtype=self.dtype)(pooled)
    return logits, pooled, last_preact


def _factory(depth: int, widen_factor: int):
  def make(num_classes: int = 100, **kwargs: Any) -> WideResNet:
    return WideResNet(depth=depth, widen_factor=widen_factor, num_classes=num_classes, **kwargs)
  make.__doc__ = f"WRN-{depth}-{widen_factor} for CIFAR."
  return make


for _depth, _k in [(16, 1), (16, 2), (40, 1), (40, 2)]:
  register(f"wrn_{_depth}_{_k}")(_factory(_depth, _k))

del _depth, _k
