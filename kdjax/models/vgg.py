"""VGG with BatchNorm for CIFAR (vgg8, vgg11, vgg13, vgg16, vgg19 = the reference's `*_bn` variants).

Layer for layer `VGG(cfg, batch_norm=True)` of RepDistiller / mdistiller `models/cifar/vgg.py`: five
Sequentials `block0..block4` of [conv3x3 (with bias), BN, ReLU] with each block's last ReLU applied in
the forward pass, 2x2 max-pools between blocks (`pool3` only for 64-pixel inputs), a global average
pool and a 512 -> classes `classifier`.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax

from kdjax.models import register
from kdjax.models import layers

# The reference draws convs from N(0, 2 / (k * k * out_channels)) with zero bias, sets BN to 1 / 0 and
# draws the Linear weight from N(0, 0.01) with zero bias.
_CONV_INIT = layers.kaiming_normal_fan_out
_LINEAR_INIT = nn.initializers.normal(stddev=0.01)

CFGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "A": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "B": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "D": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "E": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
    "S": ((64,), (128,), (256,), (512,), (512,)),
}


class VGGBlock(nn.Module):
  """`block{k}`: [conv, BN, ReLU] * len(widths) without the final ReLU; Sequential indices as names."""
  widths: Sequence[int]
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for i, width in enumerate(self.widths):
      if i:
        x = nn.relu(x)  # index 3i - 1 in the Sequential
      x = layers.conv(width, 3, use_bias=True, kernel_init=_CONV_INIT, name=str(3 * i),
                      dtype=self.dtype)(x)
      x = layers.batch_norm(train, name=str(3 * i + 1), dtype=self.dtype)(x)
    return x


class VGG(nn.Module):
  """CIFAR VGG-BN; `cfg` lists the conv widths of the five blocks."""
  cfg: Sequence[Sequence[int]]
  num_classes: int = 100
  dtype: Any = None

  @property
  def num_stages(self) -> int:
    """block1..block4 (block0 is the stem: feats[0] is its output)."""
    return len(self.cfg) - 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               start_stage: Optional[int] = None) -> tuple[jax.Array, dict[str, Any]]:
    # start_stage s: `x` is feats[s] (the output of block s, 0 = stem) and only later blocks run.
    start = 0 if start_stage is None else start_stage
    if not 0 <= start <= self.num_stages:
      raise ValueError(f"start_stage must be in [0, {self.num_stages}], got {start_stage}")
    # Block s (s <= 3) runs after s 2x2 pools, which gives back the input size.
    input_size = x.shape[1] * 2**min(start, 3)
    feats, preacts = ([], []) if start_stage is None else ([x], [x])
    first = 0 if start_stage is None else start + 1
    for k in range(first, len(self.cfg)):
      widths = self.cfg[k]
      if k and (k != 4 or input_size == 64):
        # pool0..pool2 always; pool3 only for 64-pixel inputs, so on CIFAR block4 runs at 4x4.
        x = layers.max_pool_2x2(x)
      pre = VGGBlock(tuple(widths), name=f"block{k}", dtype=self.dtype)(x, train)
      x = nn.relu(pre)
      feats.append(x)
      preacts.append(pre)
    preacts[0] = feats[0]  # the reference's preact_feats[0] is the post-ReLU f0
    pooled = layers.global_avg_pool(x)  # pool4 = AdaptiveAvgPool2d(1)
    logits = layers.dense(self.num_classes, self.cfg[-1][-1], kernel_init=_LINEAR_INIT,
                          bias_init=nn.initializers.zeros, name="classifier", dtype=self.dtype)(pooled)
    return logits, {"feats": tuple(feats), "preact_feats": tuple(preacts), "pooled": pooled}

  def from_stage(self, h: jax.Array, stage: int, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """Blocks `stage + 1 ..` and the head on `h` = `feats[stage]` (0: block0's output)."""
    return self(h, train, start_stage=stage)


def _factory(cfg_name: str):
  def make(num_classes: int = 100, **kwargs: Any) -> VGG:
    return VGG(cfg=CFGS[cfg_name], num_classes=num_classes, **kwargs)
  make.__doc__ = f"VGG-BN with configuration {cfg_name!r}."
  return make


for _name, _cfg in [("vgg8", "S"), ("vgg11", "A"), ("vgg13", "B"), ("vgg16", "D"), ("vgg19", "E")]:
  register(_name)(_factory(_cfg))

del _name, _cfg
