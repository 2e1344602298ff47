"""Throughput of the compiled train step (teacher forward + student update) on this machine.

    python experiments/benchmark.py --method=dkd --teacher=resnet32x4 --student=resnet8x4 --batch=64

Prints compile time, then images/s and ms/step over `--steps` steps after
`--warmup` steps, and peak memory (device allocator where the backend reports
it; process max RSS on CPU). Data is synthetic CIFAR-shaped uint8 (the step is
the same function that trains on CIFAR: on-device batch gather, crop/flip,
teacher forward, student forward/backward, SGD update), so no dataset is needed.
"""
from __future__ import annotations

import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from kdjax import data, models, recipes, train  # noqa: E402

_METHOD = flags.DEFINE_string("method", "dkd", "Method name.")
_TEACHER = flags.DEFINE_string("teacher", "resnet32x4", "Teacher architecture ('' for none).")
_STUDENT = flags.DEFINE_string("student", "resnet8x4", "Student architecture.")
_BATCH = flags.DEFINE_integer("batch", 64, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 50, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed steps after compilation.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")


def _synthetic_cifar(num_train: int) -> data.Dataset:
  """CIFAR-100-shaped random uint8 images; throughput does not depend on pixel values."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (num_train, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 100, num_train).astype(np.int32)
  return data.Dataset("synthetic_cifar100", images, labels, images[:500], labels[:500], 100,
                      (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))


def main(argv):
  del argv
  config = recipes.base_config()
  config.method, config.model, config.teacher.arch = _METHOD.value, _STUDENT.value, _TEACHER.value
  config.batch_size, config.dtype = _BATCH.value, _DTYPE.value
  steps = _WARMUP.value + _STEPS.value + 1
  dataset = _synthetic_cifar(max(steps * _BATCH.value, 5000))
  mesh = train.make_mesh(jax.devices())
  teacher = tvars = None
  if _TEACHER.value:
    teacher = models.get(_TEACHER.value, num_classes=100, dtype=train._dtype(config))  # pylint: disable=protected-access
    tvars = jax.jit(teacher.init)(jax.random.key(1), np.zeros((1, 32, 32, 3), np.float32))
  run = train.build(config, dataset, mesh, teacher, tvars)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  images = jax.device_put(dataset.train_images, replicated)
  labels = jax.device_put(dataset.train_labels, replicated)
  perm = run.permute(jax.random.key(0))
  state = run.state

  t0 = time.perf_counter()
  compiled = run.train_step.lower(state, tvars, images, labels, perm).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(_WARMUP.value):
    state, metrics = compiled(state, tvars, images, labels, perm)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = compiled(state, tvars, images, labels, perm)
  jax.block_until_ready((state, metrics))
  dt = time.perf_counter() - t0

  dev = jax.devices()[0]
  stats = dev.memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    memory = f"peak device memory {stats['peak_bytes_in_use'] / 2**20:.0f} MiB"
  else:
    memory = f"process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB"
  print(f"backend {jax.default_backend()} ({jax.device_count()} x {dev.device_kind}), jax {jax.__version__}")
  print(f"{_METHOD.value} {_TEACHER.value or '-'} -> {_STUDENT.value}, batch {_BATCH.value}, {_DTYPE.value}")
  print(f"compile {compile_s:.1f} s")
  print(f"step {1000 * dt / _STEPS.value:.1f} ms, {_STEPS.value * _BATCH.value / dt:.0f} images/s "
        f"over {_STEPS.value} steps; {memory}; final loss {float(metrics['loss']):.4f}")


if __name__ == "__main__":
  app.run(main)
