"""The CIFAR zoo's one contract: stem -> stages -> head, runnable from any stage.

Every CIFAR backbone is a `Backbone`: it says how to build its stem, its stage k
and its head, and inherits the forward pass that the distillation methods rely on:

* `model(x, train, start_stage=None) -> (logits, features)`, with `features` =
  `{'feats': (f0, ..., fn), 'preact_feats': (...), 'pooled': ...}` (f0 the stem);
* `start_stage=s`: `x` is `feats[s]` and only stages s+1.. and the head run (SFTN's
  student branches, `from_stage`).

Submodules are created inside these methods under the reference's names, so the
parameter trees (and the PyTorch state-dict keys they map to) are the families' own.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax


class Backbone(nn.Module):
  """Base of the CIFAR zoo; subclasses define `num_stages`, `stem`, `stage` and `head`."""

  # The pre-activation WRN taps block k's first BatchNorm (without ReLU) as the *previous*
  # stage's preact; its `stage` returns that tap and this flag places it.
  preact_from_next_stage = False

  def stem(self, x: jax.Array, train: bool) -> jax.Array:
    """The stem's output f0."""
    raise NotImplementedError

  def stage(self, k: int, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    """Stage k (1-indexed) on `x`: (output f_k, its pre-ReLU tap)."""
    raise NotImplementedError

  def head(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array, Optional[jax.Array]]:
    """(logits, pooled, a replacement for the last preact tap or None) from the last stage's output."""
    raise NotImplementedError

  def run_stages(self, x: jax.Array, train: bool, start: int) -> tuple[jax.Array, list, list]:
    """Stages start+1 .. num_stages on `x` = f_start: (last output, feats, preacts)."""
    feats, preacts = [x], [x]
    for k in range(start + 1, self.num_stages + 1):
      x, pre = self.stage(k, x, train)
      if self.preact_from_next_stage:
        if k > 1:
          preacts[-1] = pre
        pre = x
      feats.append(x)
      preacts.append(pre)
    return x, feats, preacts

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               start_stage: Optional[int] = None) -> tuple[jax.Array, dict[str, Any]]:
    start = 0 if start_stage is None else start_stage
    if not 0 <= start <= self.num_stages:
      raise ValueError(f"start_stage must be in [0, {self.num_stages}], got {start_stage}")
    if start_stage is None:
      x = self.stem(x, train)
    x, feats, preacts = self.run_stages(x, train, start)
    logits, pooled, last_preact = self.head(x, train)
    if last_preact is not None:
      preacts[-1] = last_preact
    return logits, {"feats": tuple(feats), "preact_feats": tuple(preacts), "pooled": pooled}

  def from_stage(self, h: jax.Array, stage: int, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """Stages `stage + 1 ..` and the head on `h` = `feats[stage]` (0: the stem output)."""
    return self(h, train, start_stage=stage)
