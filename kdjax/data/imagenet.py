"""ImageNet (TFDS `imagenet2012`) as a streaming tf.data pipeline, sharded per host.

ImageNet does not fit on device, so unlike CIFAR it is read, decoded and
augmented on the host CPUs while the accelerators train (docs/protocol.md §2):

* train: torchvision's RandomResizedCrop(224, scale (0.08, 1), ratio (3/4, 4/3))
  computed from the JPEG header and decoded with the fused `decode_and_crop_jpeg`
  (only the crop window is decompressed), bilinear resize, horizontal flip p=0.5;
* eval: Resize(256) (shorter side, aspect kept) + CenterCrop(224);
* output uint8 NHWC: normalisation (docs/protocol.md §2 mean/std) happens on device in
  the train step, so host-to-device transfers stay 1 byte per pixel.

Per-host sharding: process p of P reads only the contiguous slice
`train[N*p//P : N*(p+1)//P]` (TFDS reads just the records of that range), and every
process yields exactly `num_train // batch_size` batches of `batch_size // P`
examples, so all hosts run the same number of steps. Determinism: the example
order depends on (seed, epoch, process_index), every random augmentation on
(seed, epoch, example index) through stateless ops, so a given (seed, epoch) gives
the same batches however many decode threads run.

`index` is the example's position in the host's slice plus the slice start: a
unique id in [0, num_train), stable across epochs for a fixed process count (the
slice is read in TFDS's deterministic file order).

The archives are never downloaded: TFDS prepares `imagenet2012` from
ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar placed in `manual_dir`
(README, section "ImageNet").
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Iterator, Optional

import numpy as np

from kdjax.data import cifar
from kdjax.data.base import DatasetNotFoundError

NAME = "imagenet2012"
# torchvision / mdistiller constants (docs/protocol.md §2), on the [0, 1] scale.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CROP_SIZE = 224
EVAL_RESIZE_RATIO = 256 / 224  # Resize(256) before CenterCrop(224)
# RandomResizedCrop defaults (torchvision.transforms.RandomResizedCrop).
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
TRAIN_SPLIT, EVAL_SPLIT = "train", "validation"
_README = "README.md, section \"ImageNet\""


@dataclasses.dataclass(frozen=True)
class StreamingDataset:
  """A dataset too large for device memory: per-process batch iterators over TFDS."""
  name: str
  num_classes: int
  mean: tuple
  std: tuple
  num_train: int
  num_test: int
  image_shape: tuple  # (crop, crop, 3)
  builder: Any = dataclasses.field(repr=False, compare=False, default=None)
  eval_resize: int = 256
  shuffle_buffer: int = 0  # examples per host; 0: 16 local batches, at least 1024

  def train_steps(self, batch_size: int) -> int:
    """Batches per epoch on every process: `num_train // batch_size` (global batch)."""
    return self.num_train // batch_size

  def train_batches(self, *, epoch: int, batch_size: int, seed: int, process_index: int,
                    process_count: int) -> Iterator[dict]:
    """This process's augmented batches of one epoch: {'image' uint8, 'label' int32, 'index' int32}."""
    local = _local_batch(batch_size, process_count)
    ds = train_pipeline(self.builder, num_train=self.num_train, crop=self.image_shape[0],
                        epoch=epoch, seed=seed, local_batch=local,
                        steps=self.train_steps(batch_size), process_index=process_index,
                        process_count=process_count,
                        shuffle_buffer=self.shuffle_buffer or max(16 * local, 1024))
    return _as_numpy(ds)

  def eval_batches(self, *, batch_size: int, process_index: int,
                   process_count: int) -> Iterator[dict]:
    """This process's center-cropped validation batches, padded to full batches with label -1."""
    local = _local_batch(batch_size, process_count)
    ds = eval_pipeline(self.builder, num_test=self.num_test, crop=self.image_shape[0],
                       resize=self.eval_resize, local_batch=local, process_index=process_index,
                       process_count=process_count)
    return _as_numpy(ds)


def _local_batch(batch_size: int, process_count: int) -> int:
  """The per-process batch; the global batch must split evenly over processes."""
  if batch_size % process_count:
    raise ValueError(f"batch size {batch_size} is not divisible by the {process_count} processes")
  return batch_size // process_count


def process_slice(num: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, end) of process `process_index`'s contiguous share of `num` examples."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return num * process_index // process_count, num * (process_index + 1) // process_count


def _as_numpy(ds) -> Iterator[dict]:
  """Yields NumPy dicts (uint8 images, int32 labels and indices)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  for batch in tfds.as_numpy(ds):
    yield {"image": batch["image"], "label": batch["label"], "index": batch["index"]}


# ----------------------------------------------------------------------------- augmentation (tf)


def random_resized_crop_window(shape, seed, scale=CROP_SCALE, ratio=CROP_RATIO,
                               attempts: int = CROP_ATTEMPTS):
  """torchvision `RandomResizedCrop.get_params` as stateless TF ops: [top, left, h, w] (int32)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  area = height * width
  s_scale, s_ratio, s_top, s_left = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
  # All attempts at once; the first valid one wins, as in torchvision's loop.
  target = area * tf.random.stateless_uniform([attempts], s_scale, scale[0], scale[1])
  log_r = tf.random.stateless_uniform([attempts], s_ratio, math.log(ratio[0]), math.log(ratio[1]))
  aspect = tf.exp(log_r)
  w = tf.round(tf.sqrt(target * aspect))
  h = tf.round(tf.sqrt(target / aspect))
  valid = (w > 0) & (h > 0) & (w <= width) & (h <= height)
  first = tf.argmax(tf.cast(valid, tf.int32))
  # Fallback: the whole image with the aspect ratio clamped to the range, centred.
  in_ratio = width / height
  fb_w = tf.where(in_ratio < ratio[0], width,
                  tf.where(in_ratio > ratio[1], tf.round(height * ratio[1]), width))
  fb_h = tf.where(in_ratio < ratio[0], tf.round(width / ratio[0]), height)
  any_valid = tf.reduce_any(valid)
  h = tf.where(any_valid, h[first], fb_h)
  w = tf.where(any_valid, w[first], fb_w)
  # Uniform integer offsets in [0, H - h] and [0, W - w] (torch.randint's inclusive range).
  u_top = tf.random.stateless_uniform([], s_top)
  u_left = tf.random.stateless_uniform([], s_left)
  top = tf.where(any_valid, tf.floor(u_top * (height - h + 1)), tf.floor((height - h) / 2))
  left = tf.where(any_valid, tf.floor(u_left * (width - w + 1)), tf.floor((width - w) / 2))
  # Rounding can put h/w one past the edge in degenerate images; clamp.
  h, w = tf.minimum(h, height), tf.minimum(w, width)
  top = tf.clip_by_value(top, 0.0, height - h)
  left = tf.clip_by_value(left, 0.0, width - w)
  return tf.cast(tf.stack([top, left, h, w]), tf.int32)


def _to_uint8(image):
  """Rounds and clips a float image to uint8."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def train_image(jpeg, seed, crop: int):
  """Decodes the random-resized-crop window of a JPEG, resizes to crop x crop, flips; uint8."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  window = random_resized_crop_window(tf.io.extract_jpeg_shape(jpeg), crop_seed)
  image = tf.io.decode_and_crop_jpeg(jpeg, window, channels=3)
  # PIL's bilinear resize (torchvision on PIL images) is antialiased when shrinking.
  image = tf.image.resize(image, [crop, crop], method="bilinear", antialias=True)
  flip = tf.random.stateless_uniform([], flip_seed) < 0.5
  image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
  return _to_uint8(image)


def eval_image(jpeg, crop: int, resize: int):
  """Resize(resize) of the shorter side (torchvision's rounding) then CenterCrop(crop); uint8."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  image = tf.io.decode_jpeg(jpeg, channels=3)
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  # torchvision: the short side becomes `resize`, the long one int(resize * long / short).
  short, long = tf.minimum(h, w), tf.maximum(h, w)
  new_long = tf.cast(tf.cast(resize, tf.float64) * tf.cast(long, tf.float64)
                     / tf.cast(short, tf.float64), tf.int32)
  new_h = tf.where(h <= w, resize, new_long)
  new_w = tf.where(h <= w, new_long, resize)
  image = tf.image.resize(image, [new_h, new_w], method="bilinear", antialias=True)
  # CenterCrop: offsets int(round((size - crop) / 2)).
  top = tf.cast(tf.round(tf.cast(new_h - crop, tf.float32) / 2.0), tf.int32)
  left = tf.cast(tf.round(tf.cast(new_w - crop, tf.float32) / 2.0), tf.int32)
  image = image[top:top + crop, left:left + crop]
  return _to_uint8(tf.reshape(image, [crop, crop, 3]))


# ----------------------------------------------------------------------------- pipelines


def _options(tf) -> Any:
  """Deterministic order, autotuned parallelism, host-side threads sized to the machine."""
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = True
  options.threading.private_threadpool_size = max(os.cpu_count() or 1, 2)
  return options


def _read(builder, split: str, start: int):
  """(encoded JPEG, label, index) records of `split`, in TFDS's deterministic order."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()},
                          read_config=tfds.ReadConfig(try_autocache=False, skip_prefetch=True))
  return ds.enumerate(start).map(
      lambda i, ex: {"image": ex["image"], "label": tf.cast(ex["label"], tf.int32),
                     "index": tf.cast(i, tf.int32)})


def train_pipeline(builder, *, num_train: int, crop: int, epoch: int, seed: int, local_batch: int,
                   steps: int, process_index: int, process_count: int, shuffle_buffer: int):
  """tf.data pipeline of exactly `steps` augmented batches of `local_batch` for this process."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  start, end = process_slice(num_train, process_index, process_count)
  ds = _read(builder, f"{TRAIN_SPLIT}[{start}:{end}]", start)
  # One shuffle order per (seed, epoch, process); the augmentation seed per example below.
  order_seed = int(np.random.SeedSequence([seed, epoch, process_index]).generate_state(1)[0])
  ds = ds.shuffle(shuffle_buffer, seed=order_seed, reshuffle_each_iteration=False)
  aug_seed = tf.constant([seed, epoch], tf.int64)

  def augment(ex):
    example_seed = tf.random.experimental.stateless_fold_in(aug_seed, tf.cast(ex["index"], tf.int64))
    return dict(ex, image=train_image(ex["image"], example_seed, crop))

  ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch, drop_remainder=True).take(steps)
  return ds.with_options(_options(tf)).prefetch(tf.data.AUTOTUNE)


def eval_pipeline(builder, *, num_test: int, crop: int, resize: int, local_batch: int,
                  process_index: int, process_count: int):
  """This process's share of the validation split in full batches, padded with label -1."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  start, end = process_slice(num_test, process_index, process_count)
  # Every process runs the same number of eval batches: that of the largest share.
  num_batches = math.ceil(math.ceil(num_test / process_count) / local_batch)
  ds = _read(builder, f"{EVAL_SPLIT}[{start}:{end}]", start)
  ds = ds.map(lambda ex: dict(ex, image=eval_image(ex["image"], crop, resize)),
              num_parallel_calls=tf.data.AUTOTUNE)
  pad = tf.data.Dataset.from_tensors({
      "image": tf.zeros([crop, crop, 3], tf.uint8), "label": tf.constant(-1, tf.int32),
      "index": tf.constant(-1, tf.int32)}).repeat()
  ds = ds.concatenate(pad).batch(local_batch, drop_remainder=True).take(num_batches)
  return ds.with_options(_options(tf)).prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------- loading


def _not_found(where: str, manual_dir: str, cause: str = "") -> DatasetNotFoundError:
  """The error for an unprepared imagenet2012, naming the two config fields and the README section."""
  cause = f" ({cause})" if cause else ""
  return DatasetNotFoundError(
      f"TFDS dataset '{NAME}' is not prepared in {where}{cause}. ImageNet cannot be downloaded "
      f"by TFDS: place ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in a directory and "
      f"set --config.data.manual_dir to it (now: {manual_dir or '<data_dir>/downloads/manual'}) "
      f"and --config.data.data_dir to where the prepared TFRecords go (about 150 GB); the first "
      f"run then prepares them (hours, once). See {_README}.")


def _process_count() -> int:
  """JAX's process count when JAX is imported (by the trainer), else 1 (no JAX import for it)."""
  import sys  # pylint: disable=import-outside-toplevel
  jax = sys.modules.get("jax")
  return int(jax.process_count()) if jax is not None else 1


def _split_size(builder, split: str) -> int:
  """Examples in `split`: from the dataset info, or by the dataset's cardinality (mocked data)."""
  try:
    n = int(builder.info.splits[split].num_examples)
    if n > 0:
      return n
  except (KeyError, ValueError, TypeError):
    pass
  # tfds.testing.mock_data knows no split sizes; its datasets carry their cardinality.
  return int(builder.as_dataset(split=split).cardinality())


def load(data_dir: Optional[str] = None, download: bool = False, manual_dir: Optional[str] = None,
         image_size: int = 0) -> StreamingDataset:
  """`imagenet2012` as a StreamingDataset; prepares it from `manual_dir` when given or `download`.

  `image_size` (0: 224) is the crop side; eval resizes to round(image_size * 256 / 224) first.
  """
  tfds = cifar._import_tfds()  # pylint: disable=protected-access
  if data_dir:
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
  if manual_dir:
    manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
  builder = tfds.builder(NAME, data_dir=data_dir)
  root = os.fspath(builder.data_dir_root)
  where = f"data_dir={root}" + ("" if data_dir else " (TFDS's default; $TFDS_DATA_DIR changes it)")
  mocked = cifar._tfds_is_mocked(tfds)  # pylint: disable=protected-access
  if not mocked and not builder.is_prepared():
    if not (download or manual_dir):
      raise _not_found(where, manual_dir or "")
    if _process_count() > 1:  # every host would write the same ~150 GB at once
      raise _not_found(where, manual_dir or "", "prepare it once, from one process, before a "
                       "multi-host run")
    config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
    try:
      builder.download_and_prepare(download_config=config)
    except Exception as e:  # pylint: disable=broad-except  (missing archives: AssertionError etc.)
      raise _not_found(where, manual_dir or "", " ".join(f"{type(e).__name__}: {e}".split())) from e
  crop = int(image_size) or CROP_SIZE
  return StreamingDataset(
      name=NAME, num_classes=int(builder.info.features["label"].num_classes), mean=MEAN, std=STD,
      num_train=_split_size(builder, TRAIN_SPLIT), num_test=_split_size(builder, EVAL_SPLIT),
      image_shape=(crop, crop, 3), builder=builder,
      eval_resize=int(round(crop * EVAL_RESIZE_RATIO)))
