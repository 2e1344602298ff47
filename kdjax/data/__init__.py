"""Datasets loaded once into host memory as uint8 NumPy arrays, plus on-device augmentation.

The trainer puts the arrays on device once and does permutation, crop, flip and
normalisation inside jitted code (`kdjax.data.augment`); no input pipeline runs
during training (jax-practice.md §3.3).

* `cifar100`, `cifar10`: TFDS. TensorFlow is imported only when one of them is
  loaded, so `import kdjax.data` and the embedded `digits` set need no TF.
* `stl10`: TFDS, 96x96, 10 classes; `unlabelled=True` appends its 100000-image
  unlabelled split to the training set with label -1 (FKD's cross-dataset setting).
  TFDS 4.9.10 has no Tiny-ImageNet builder, so kdjax has no Tiny-ImageNet loader.
* `image_size`: every split resized once on the host at load time (antialiased
  bilinear), e.g. STL-10 at 32 for CIFAR nets; 0 keeps the native size.
* `digits`: scikit-learn's 8x8 handwritten digits brought to 32x32x3, shipped
  inside the scikit-learn package: a real dataset that needs no download.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from kdjax.errors import UserError

from kdjax.data import augment  # noqa: F401  (re-exported: `kdjax.data.augment.random_crop_flip`)

_NAMES = ("cifar10", "cifar100", "digits", "imagenet2012", "stl10")


class DatasetNotFoundError(UserError):
  """The dataset is not prepared locally (and could not be downloaded); the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A whole dataset in host memory: uint8 NHWC images, int32 labels, normalisation constants."""
  name: str
  train_images: np.ndarray  # uint8 (N, H, W, 3)
  train_labels: np.ndarray  # int32 (N,)
  test_images: np.ndarray  # uint8 (M, H, W, 3)
  test_labels: np.ndarray  # int32 (M,)
  num_classes: int
  mean: tuple[float, float, float]  # per channel, on the [0, 1] scale
  std: tuple[float, float, float]

  def __post_init__(self):
    # Cheap checks here catch a loader bug before it becomes a silent training bug.
    for split in ("train", "test"):
      images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
      if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{self.name}: {split}_images must be uint8 (N, H, W, 3), got "
                         f"{images.dtype} {images.shape}")
      if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
        raise ValueError(f"{self.name}: {split}_labels must be int32 ({images.shape[0]},), got "
                         f"{labels.dtype} {labels.shape}")


def names() -> list[str]:
  """All loadable dataset names."""
  return list(_NAMES)


_RESIZE_CHUNK = 5_000  # images per tf.image.resize call: bounds the float32 temporaries


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """uint8 (N, H, W, C) -> uint8 (N, size, size, C), antialiased bilinear (area-aware when shrinking)."""
  if images.shape[1:3] == (size, size):
    return images
  from kdjax.data import cifar  # pylint: disable=import-outside-toplevel
  cifar._import_tfds()  # pylint: disable=protected-access  (hides accelerators from TF first)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = [np.clip(np.rint(tf.image.resize(images[i:i + _RESIZE_CHUNK], (size, size), method="bilinear",
                                         antialias=True).numpy()), 0, 255).astype(np.uint8)
         for i in range(0, len(images), _RESIZE_CHUNK)]
  return np.concatenate(out) if out else np.zeros((0, size, size, images.shape[-1]), np.uint8)


def resize(dataset: Dataset, size: int) -> Dataset:
  """`dataset` with both splits resized to size x size (0: unchanged)."""
  if not size:
    return dataset
  if not isinstance(dataset, Dataset):
    raise UserError(f"config.data.image_size={size} applies to in-memory datasets, not to a "
                    f"{type(dataset).__name__}.")
  return dataclasses.replace(dataset, train_images=resize_images(dataset.train_images, size),
                             test_images=resize_images(dataset.test_images, size))


def load(name: str, data_dir: str | None = None, download: bool = False,
         manual_dir: str | None = None, image_size: int = 0, unlabelled: bool = False) -> Dataset:
  """Loads the train and test splits of `name` into memory (`data_dir`/`download` apply to TFDS sets).

  `image_size` > 0 resizes every split to that side once, here on the host; `unlabelled`
  (STL-10 only) adds the unlabelled split to the training set with label -1.
  """
  if image_size < 0:
    raise UserError(f"config.data.image_size={image_size}; it must be >= 0 (0: native size).")
  if unlabelled and name != "stl10":
    raise UserError(f"dataset {name!r} has no unlabelled split; only stl10 has one.")
  if name == "stl10":  # resizes chunk by chunk while reading: 105k 96-px images are 2.9 GB
    from kdjax.data import stl10  # pylint: disable=import-outside-toplevel
    return stl10.load(data_dir=data_dir, download=download, unlabelled=unlabelled, image_size=image_size)
  if name == "imagenet2012":  # streamed from disk: a `imagenet.StreamingDataset`; image_size = crop side
    from kdjax.data import imagenet  # pylint: disable=import-outside-toplevel
    return imagenet.load(data_dir=data_dir, download=download, manual_dir=manual_dir,
                         image_size=image_size)
  if image_size:
    return resize(load(name, data_dir=data_dir, download=download, manual_dir=manual_dir), image_size)
  # Imported here so that `import kdjax.data` stays cheap and TF-free.
  if name == "digits":
    from kdjax.data import digits  # pylint: disable=import-outside-toplevel
    return digits.load()
  if name in ("cifar10", "cifar100"):
    from kdjax.data import cifar  # pylint: disable=import-outside-toplevel
    return cifar.load(name, data_dir=data_dir, download=download)
  raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(_NAMES)}")
