"""Datasets loaded once into host memory as uint8 NumPy arrays, plus on-device augmentation.

The trainer puts the arrays on device once and does permutation, crop, flip and
normalisation inside jitted code (`kdjax.data.augment`); no input pipeline runs
during training (jax-practice.md §3.3).

* `cifar100`, `cifar10`: TFDS. TensorFlow is imported only when one of them is
  loaded, so `import kdjax.data` and the embedded `digits` set need no TF.
* `digits`: scikit-learn's 8x8 handwritten digits brought to 32x32x3, shipped
  inside the scikit-learn package: a real dataset that needs no download.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from kdjax.errors import UserError

from kdjax.data import augment  # noqa: F401  (re-exported: `kdjax.data.augment.random_crop_flip`)

_NAMES = ("cifar10", "cifar100", "digits")


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


def load(name: str, data_dir: str | None = None, download: bool = False) -> Dataset:
  """Loads the train and test splits of `name` into memory (`data_dir`/`download` apply to TFDS sets)."""
  # Imported here so that `import kdjax.data` stays cheap and TF-free.
  if name == "digits":
    from kdjax.data import digits  # pylint: disable=import-outside-toplevel
    return digits.load()
  if name in ("cifar10", "cifar100"):
    from kdjax.data import cifar  # pylint: disable=import-outside-toplevel
    return cifar.load(name, data_dir=data_dir, download=download)
  raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(_NAMES)}")
