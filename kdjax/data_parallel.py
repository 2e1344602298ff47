"""Row-wise work split over the data-parallel devices where XLA's partitioner would not split it.

kdjax's train step runs under `jax.jit` over a 1-D device mesh with the batch sharded on its
leading axis (kdjax/train/pipeline.py), and XLA partitions almost every operation along that
axis by itself. A few it replicates instead: its TopK runs every row of the batch on every
device (CRD's negative sampler, 64 x 50,000 keys: 245 ms per step on 2 CPU devices, 118 ms
split). `per_device_rows` runs such an operation under `jax.shard_map` on each device's rows of
the mesh the step is traced under (`train_step` enters it), and as it is without one.
"""
from __future__ import annotations

from typing import Callable

import jax
from jax.sharding import PartitionSpec as P


def per_device_rows(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """`fn` on each device's rows of its arguments (leading axis sharded over the traced-under
  mesh); `fn` itself without a multi-device mesh or when a leading axis does not divide."""

  def split(*args: jax.Array) -> jax.Array:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or any(a.shape[0] % mesh.size for a in args):
      return fn(*args)
    rows = P(mesh.axis_names)  # the leading axis over every axis of kdjax's 1-D mesh
    return jax.shard_map(fn, in_specs=rows, out_specs=rows)(*args)

  return split
