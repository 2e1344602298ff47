"""The in-memory dataset value and its checks (the loaders and the trainer share it)."""
from __future__ import annotations

import dataclasses

import numpy as np

from kdjax.errors import UserError


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
