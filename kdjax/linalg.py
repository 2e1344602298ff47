"""LAPACK decompositions inside a jitted step: running them one at a time on the CPU.

On the CPU, jaxlib 0.10's LAPACK kernels (`svd`, `eigh`, `qr`, `cholesky`, `lu`, ...) split
their batch across XLA's intra-op thread pool and block the calling pool thread until the
pieces are done (`jax::ParallelBatchMap` waiting on an `absl::BlockingCounter`). When XLA
schedules as many independent decompositions at once as the pool has threads, every thread
waits for pieces that no free thread is left to run: the program deadlocks, silently
(issue 16; on a 2-core machine two concurrent SVDs are enough). One decomposition at a time
cannot starve the pool, so methods that run several chain them with `after`.

GPU (cuSOLVER) and TPU (XLA's own Jacobi SVD / eigh) kernels do not wait on a host thread
pool; there `after` lowers to nothing and XLA keeps its freedom to overlap them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _ordered(x: jax.Array, dep: jax.Array) -> jax.Array:
  # A data dependency, since XLA:CPU runs its thunks as soon as their operands exist (an
  # optimization barrier is expanded away before that and orders nothing). `zero` is exactly
  # 0 for any `dep`, NaN included, and XLA does not fold a float product with 0 away; adding
  # it changes no value (-0.0 becomes +0.0, which no decomposition distinguishes).
  probe = jnp.ravel(dep)[0]
  zero = (probe != probe).astype(x.dtype) * jnp.zeros((), x.dtype)
  return x + zero


def _unordered(x: jax.Array, dep: jax.Array) -> jax.Array:
  del dep
  return x


def after(x: jax.Array, dep: jax.Array | None) -> jax.Array:
  """`x` unchanged, but on the CPU available only after `dep` (e.g. a previous SVD's output) is."""
  if dep is None:
    return x
  dep = jax.lax.stop_gradient(dep)
  return jax.lax.platform_dependent(x, dep, cpu=_ordered, default=_unordered)
