"""SimKD's student as it predicts (Chen et al., CVPR 2022): the student network, a projector to the
teacher's last feature map, and the teacher's reused classifier.

Its name is `simkd(STUDENT,channels=C,hw=H,factor=F)`: the student's last stage output is
average-pooled to H x H when it is larger (SimKD's spatial alignment), projected to the
teacher's C channels by 1x1 conv (C/F) + BN + ReLU, 3x3 conv (C/F) + BN + ReLU, 1x1 conv (C)
+ BN + ReLU, pooled, and classified by the teacher's linear layer. Module names follow the
release's PyTorch modules: `student`, `transfer` (its `nn.Sequential`, children 0, 1, 3, 4,
6, 7), `cls_t`. The method that trains it is `kdjax/methods/simkd.py`.
"""
from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax import ops
from kdjax.errors import UserError
from kdjax.models import layers

PREFIX = "simkd("
_NAME = re.compile(r"^simkd\(([^,()]+),channels=(\d+),hw=(\d+),factor=(\d+)\)$")


def name(student: str, channels: int, hw: int, factor: int) -> str:
  """The model name of SimKD's deployed `student`."""
  return f"simkd({student},channels={channels},hw={hw},factor={factor})"


def parse(arch: str) -> tuple[str, int, int, int]:
  """(student, channels, hw, factor) of a `simkd(...)` name."""
  match = _NAME.match(arch)
  if not match:
    raise UserError(f"{arch!r} is not a SimKD model name; it reads 'simkd(STUDENT,channels=C,hw=H,factor=F)'.")
  student, channels, hw, factor = match.groups()
  return student, int(channels), int(hw), int(factor)


def align(f_s: jax.Array, hw: int) -> jax.Array:
  """The student's NHWC map average-pooled to hw x hw when it is larger (SimKD's `s_H > t_H`)."""
  return ops.adaptive_avg_pool(f_s, (hw, hw)) if f_s.shape[1] > hw else f_s


class Projector(nn.Module):
  """SimKD's bottleneck projector (NHWC), named as the release's `transfer` Sequential."""
  channels: int
  factor: int = 2
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    hidden = self.channels // self.factor
    for conv, bn, width, kernel in (("0", "1", hidden, 1), ("3", "4", hidden, 3), ("6", "7", self.channels, 1)):
      x = layers.conv(width, kernel, name=conv, dtype=self.dtype)(x)
      x = nn.relu(layers.batch_norm(train, name=bn, dtype=self.dtype)(x))
    return x


class SimKDStudent(nn.Module):
  """Student -> aligned last stage -> projector -> average pool -> the teacher's classifier."""
  student: nn.Module
  channels: int
  hw: int
  factor: int
  num_classes: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    _, features = self.student(x, train=train)
    h = Projector(self.channels, self.factor, self.dtype, name="transfer")(align(features["feats"][-1], self.hw),
                                                                           train)
    pooled = jnp.mean(h, axis=(1, 2))
    logits = layers.dense(self.num_classes, self.channels, name="cls_t", dtype=self.dtype)(pooled)
    return logits, dict(features, pooled=pooled)
