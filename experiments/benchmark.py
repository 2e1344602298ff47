"""Throughput of the compiled train step (teacher forward + student update) on this machine.

    python experiments/benchmark.py --method=dkd --teacher=resnet32x4 --student=resnet8x4 --batch=64
    python experiments/benchmark.py --method=dkd --teacher=imagenet_resnet34 \
        --student=imagenet_resnet18 --batch=512 --dtype=bfloat16
    python experiments/benchmark.py --pipeline --data_dir=/data/tfds --batch=512
    python experiments/benchmark.py --pipeline --mock_examples=512 --batch=64   # no ImageNet needed

On a CPU the step runs on one XLA device per core, as a training run's (`--cpu_devices`).
Prints compile time, then images/s and ms/step over `--steps` steps after
`--warmup` steps, peak memory (device allocator where the backend reports
it; process max RSS on CPU), and the wall time of `--epochs` epochs at that step
time. Data is synthetic uint8 on device, so no dataset is needed: CIFAR-shaped for the CIFAR zoo (the step that trains on CIFAR: on-device
batch gather, crop/flip, teacher forward, student forward/backward, SGD update),
224 x 224 batches for `imagenet_*` students (the streaming step that trains on
ImageNet: normalisation, teacher forward, student update).

`--pipeline` times the host side instead: the real imagenet2012 tf.data pipeline
(kdjax/data/imagenet.py: JPEG decode of the random-resized crop, resize, flip,
batching) for this process, and reports images/s and images/s per host CPU core,
the number to set beside the step's images/s (a host must deliver the step's
images/s divided by the number of hosts). `--mock_examples=N` runs it on N
synthetic ImageNet-sized JPEGs (500 x 375, smooth content) under
`tfds.testing.mock_data` instead of the prepared dataset.
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

from kdjax import cpu, data, models, recipes, train  # noqa: E402
from kdjax.data import imagenet  # noqa: E402

_METHOD = flags.DEFINE_string("method", "dkd", "Method name.")
_TEACHER = flags.DEFINE_string("teacher", "resnet32x4", "Teacher architecture ('' for none).")
_STUDENT = flags.DEFINE_string("student", "resnet8x4", "Student architecture.")
_BATCH = flags.DEFINE_integer("batch", 64, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 50, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed steps after compilation.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Students trained in one program (config.seeds=0..N-1).")
_SEEDS_MAP = flags.DEFINE_enum("seeds_map", "auto", ["auto", "vmap", "sequential"], "config.seeds_map.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Crop side of imagenet_* models and --pipeline.")
_PIPELINE = flags.DEFINE_bool("pipeline", False, "Time the imagenet2012 input pipeline, not the step.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir holding a prepared imagenet2012.")
_EPOCHS = flags.DEFINE_integer("epochs", 240, "Epochs of the printed wall-time projection.")
_TRAIN_SIZE = flags.DEFINE_integer(
    "train_size", 0, "Training images per epoch of the projection (0: 50,000 as CIFAR-100's, "
    "1,281,167 as ImageNet's for imagenet_* students).")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0, "XLA devices on the CPU, as kdjax.main's flag (0: one per core dividing the batch, "
    "what a training run gets; 1: one). No effect on GPU/TPU steps.")
_MOCK_EXAMPLES = flags.DEFINE_integer(
    "mock_examples", 0, "--pipeline on this many synthetic JPEGs under tfds.testing.mock_data.")


def _synthetic_cifar(num_train: int) -> data.Dataset:
  """CIFAR-100-shaped random uint8 images; throughput does not depend on pixel values."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (num_train, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 100, num_train).astype(np.int32)
  return data.Dataset("synthetic_cifar100", images, labels, images[:500], labels[:500], 100,
                      (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))


def _synthetic_imagenet(num_train: int) -> imagenet.StreamingDataset:
  """The shape of imagenet2012 without its data: the step gets its batches from this script."""
  size = _IMAGE_SIZE.value
  return imagenet.StreamingDataset("synthetic_imagenet2012", 1000, imagenet.MEAN, imagenet.STD,
                                   num_train=num_train, num_test=_BATCH.value,
                                   image_shape=(size, size, 3))


def _step_inputs(config, dataset, run, mesh):
  """(images, labels, perm) arguments of the step: the resident set, or one streamed global batch."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  if not data.is_streaming(dataset):
    images = jax.device_put(dataset.train_images, replicated)
    labels = jax.device_put(dataset.train_labels, replicated)
    key = jax.random.split(jax.random.key(0), run.seeds) if run.seeds else jax.random.key(0)
    return images, labels, run.permute(key)
  # One random uint8 batch on device, sharded like the trainer's streamed batches.
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  rng = np.random.default_rng(0)
  b = config.batch_size
  images = rng.integers(0, 256, (b, *dataset.image_shape), dtype=np.uint8)
  labels = rng.integers(0, dataset.num_classes, b).astype(np.int32)
  return (jax.device_put(images, sharded), jax.device_put(labels, sharded),
          jax.device_put(np.arange(b, dtype=np.int32), sharded))


def main(argv):
  del argv
  if _PIPELINE.value:
    return _pipeline()
  config = recipes.base_config()
  config.method, config.model, config.teacher.arch = _METHOD.value, _STUDENT.value, _TEACHER.value
  config.batch_size, config.dtype = _BATCH.value, _DTYPE.value
  if _SEEDS.value > 1:
    config.seeds, config.seeds_map = ",".join(map(str, range(_SEEDS.value))), _SEEDS_MAP.value
  cpu.split_cpu(config, _CPU_DEVICES.value)  # before JAX's first backend call, as kdjax.main
  steps = _WARMUP.value + _STEPS.value + 1
  if _STUDENT.value.startswith("imagenet_"):
    dataset = _synthetic_imagenet(steps * _BATCH.value)
  else:
    dataset = _synthetic_cifar(max(steps * _BATCH.value, 5000))
  mesh = train.make_mesh(jax.devices())
  teachers = []
  if _TEACHER.value:
    teacher = models.get(_TEACHER.value, num_classes=dataset.num_classes, dtype=models.compute_dtype(config.dtype))
    x = np.zeros((1, *data.image_shape(dataset)), np.float32)
    teachers = [train.Teacher(teacher, jax.jit(teacher.init)(jax.random.key(1), x))]
  run = train.build(config, dataset, mesh, teachers)
  tvars = run.teacher_vars
  images, labels, perm = _step_inputs(config, dataset, run, mesh)
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
  print(f"{_METHOD.value} {_TEACHER.value or '-'} -> {_STUDENT.value}, batch {_BATCH.value}, "
        f"{_DTYPE.value}, images {'x'.join(map(str, data.image_shape(dataset)))}")
  print(f"compile {compile_s:.1f} s")
  ips = _STEPS.value * _BATCH.value * max(run.seeds, 1) / dt
  seeds = f" ({run.seeds} seeds, {config.seeds_map})" if run.seeds else ""
  print(f"step {1000 * dt / _STEPS.value:.1f} ms{seeds}, {ips:.{0 if ips >= 10 else 2}f} images/s "
        f"over {_STEPS.value} steps; {memory}; final loss {float(np.mean(metrics['loss'])):.4f}")
  train_size = _TRAIN_SIZE.value or (1281167 if _STUDENT.value.startswith("imagenet_") else 50000)
  hours = projected_hours(dt / _STEPS.value, train_size, _BATCH.value, _EPOCHS.value)
  print(f"projected {_EPOCHS.value} epochs of {train_size} images at this step time: {hours:.1f} h "
        "(train steps only: no evaluation, input pipeline or checkpoints)")


def projected_hours(step_seconds: float, train_size: int, batch: int, epochs: int) -> float:
  """Hours of `epochs` epochs of `train_size // batch` steps (the trainer drops the last partial batch)."""
  return step_seconds * (train_size // batch) * epochs / 3600


def _mock_as_dataset(self, split, decoders=None, read_config=None, **kwargs):
  """N synthetic ImageNet-sized JPEGs honouring `split[a:b]` (TFDS's mock ignores slices)."""
  del self, decoders, read_config, kwargs
  import re  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  match = re.fullmatch(r"(\w+)(?:\[(\d*):(\d*)\])?", str(split))
  start, end = int(match.group(2) or 0), int(match.group(3) or _MOCK_EXAMPLES.value)
  rng = np.random.default_rng(0)
  jpegs = []
  for _ in range(16):  # smooth content compresses like a photo; pure noise would not
    small = rng.integers(0, 256, (47, 63, 3)).astype(np.float32)
    jpegs.append(tf.io.encode_jpeg(tf.cast(tf.image.resize(small[None], [375, 500])[0], tf.uint8),
                                   quality=90).numpy())
  idx = np.arange(start, end)
  return tf.data.Dataset.from_tensor_slices({
      "image": [jpegs[i % len(jpegs)] for i in idx], "label": (idx % 1000).astype(np.int64),
      "file_name": [f"{i}.JPEG" for i in idx]})


def _pipeline() -> None:
  """Images/s of this process's imagenet2012 training pipeline, and per host CPU core."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  if _MOCK_EXAMPLES.value:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset):
      _time_pipeline(imagenet.load(image_size=_IMAGE_SIZE.value), cores, "synthetic 500x375 JPEGs")
  else:
    _time_pipeline(imagenet.load(data_dir=_DATA_DIR.value, image_size=_IMAGE_SIZE.value), cores,
                   "imagenet2012")


def _time_pipeline(dataset: imagenet.StreamingDataset, cores: int, source: str) -> None:
  """Iterates `--warmup` then `--steps` batches of one epoch and prints the rate."""
  batches = dataset.train_batches(epoch=0, batch_size=_BATCH.value, seed=0, process_index=0,
                                  process_count=1)
  t_start = t0 = time.perf_counter()
  n = timed = 0
  for i, batch in enumerate(batches):  # an epoch may hold fewer batches than asked for
    if i == _WARMUP.value:
      t0 = time.perf_counter()
    elif i > _WARMUP.value:
      n, timed = n + batch["image"].shape[0], timed + 1
    if timed == _STEPS.value:
      break
  dt = time.perf_counter() - t0
  if not timed:
    raise SystemExit(f"the epoch has {dataset.train_steps(_BATCH.value)} batches; lower --warmup")
  print(f"pipeline {source}, batch {_BATCH.value}, {dataset.image_shape[0]} px crops, "
        f"{cores} host CPU cores; first {_WARMUP.value + 1} batches {t0 - t_start:.1f} s "
        "(incl. shuffle-buffer fill)")
  print(f"{n / dt:.0f} images/s over {timed} batches = {n / dt / cores:.1f} images/s per "
        f"host CPU core")


if __name__ == "__main__":
  app.run(main)
