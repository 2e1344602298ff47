"""The method interface: a pure loss over student and teacher outputs.

A method is a frozen bundle of two pure functions, built from its config node:

* `init(rng, student_out, teacher_out, data_info) -> (params, state)`: the method's own
  trainable parameters (connectors, fusion modules, embeddings: optimised with the
  student, excluded from the exported student) and its non-gradient state (memory
  banks, counters), both pytrees, empty for logit methods. `data_info` is
  `{'num_train': int, 'num_classes': int, 'train_labels': np.ndarray}`;
* `loss(params, state, student_out, teacher_out, batch, progress)
  -> (loss, metrics, new_state)`, where `batch` is `{'label': int (B,),
  'index': int (B,), 'rng': key}`: `index` holds the examples' positions in the
  training set (for per-example state such as CRD's memory bank) and `rng` is a
  fresh PRNG key for this step (e.g. for negative sampling).

`student_out` / `teacher_out` are a model's `(logits, features)`; `teacher_out`
is None for methods without a teacher and a list for ensembles. The train loop
knows nothing else about a method, so adding one never touches it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp

PyTree = Any
ModelOutput = tuple[jax.Array, dict[str, Any]]


@flax.struct.dataclass
class Progress:
  """Where training stands; `epoch` is 0-indexed and counts finished epochs."""
  step: jax.Array
  epoch: jax.Array


def empty_init(rng: jax.Array, student_out: ModelOutput, teacher_out: Optional[ModelOutput],
               data_info: dict[str, Any]) -> tuple[PyTree, PyTree]:
  """`init` of methods without parameters or state."""
  del rng, student_out, teacher_out, data_info
  return {}, {}


@dataclasses.dataclass(frozen=True)
class Method:
  """A distillation method: its name, whether it needs a teacher, `init` and `loss`."""
  name: str
  needs_teacher: bool
  loss: Callable[..., tuple[jax.Array, dict[str, jax.Array], PyTree]]
  init: Callable[..., tuple[PyTree, PyTree]] = empty_init


def at_least_f32(x: jax.Array) -> jax.Array:
  """`x` in float32, or wider if it already is (losses never run in bf16/fp16)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels, computed in float32."""
  logp = jax.nn.log_softmax(at_least_f32(logits), axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def warmup_factor(progress: Progress, warmup_epochs: float, epoch_base: int) -> jax.Array:
  """min(epoch / warmup, 1) with the epoch counted from `epoch_base` (mdistiller: 1)."""
  if warmup_epochs <= 0:
    return jnp.float32(1.0)
  epoch = progress.epoch.astype(jnp.float32) + epoch_base
  return jnp.minimum(epoch / warmup_epochs, 1.0)
