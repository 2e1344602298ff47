"""Datasets loaded once into host memory as uint8 NumPy arrays, plus on-device augmentation.

The trainer puts the arrays on device once and does permutation, crop, flip and
normalisation inside jitted code (`kdjax.data.augment`); no input pipeline runs
during training.

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
from kdjax.data.base import Dataset, DatasetNotFoundError
from kdjax.data.resize import resize_images

_NAMES = ("cifar10", "cifar100", "digits", "imagenet2012", "stl10")


def names() -> list[str]:
  """All loadable dataset names."""
  return list(_NAMES)


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


def is_streaming(dataset) -> bool:
  """Whether `dataset` streams batches from a host pipeline (ImageNet) instead of living on device."""
  return hasattr(dataset, "train_batches")


def num_train(dataset) -> int:
  """The number of training examples, resident or streamed."""
  return int(dataset.num_train) if is_streaming(dataset) else int(dataset.train_images.shape[0])


def image_shape(dataset) -> tuple[int, ...]:
  """(H, W, C) of the training images, resident or streamed."""
  return tuple(dataset.image_shape) if is_streaming(dataset) else tuple(dataset.train_images.shape[1:])


def pad_to(images: np.ndarray, labels: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
  """Pads a split to a multiple of `multiple` rows with label -1 (rows that never count)."""
  n = images.shape[0]
  total = -(-n // multiple) * multiple
  if total == n:
    return images, labels
  pad_images = np.zeros((total - n, *images.shape[1:]), images.dtype)
  return (np.concatenate([images, pad_images]),
          np.concatenate([labels, -np.ones(total - n, labels.dtype)]))


def streams(name: str) -> bool:
  """Whether the dataset `name` is streamed from disk (no auto-trained teachers on it)."""
  return name == "imagenet2012"
