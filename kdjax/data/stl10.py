"""STL-10 from TFDS (`stl10`): 96x96 RGB, 10 classes, read once into uint8 NumPy arrays.

Splits: `train` (5000 labelled), `test` (8000 labelled) and `unlabelled` (100000
images). With `unlabelled=True` the unlabelled split is appended to the training set
with label -1: `base.cross_entropy` skips those examples, so a method sees them only
through the teacher (FKD's kernel, KD's soft targets). FKD (He & Ozay, 2022) trained
its STL-10 students on train + unlabelled.

`image_size` resizes each read batch right away (antialiased bilinear,
`kdjax.data.resize_images`), so 96-px copies of the 105000 images (2.9 GB) are
never held at once when a CIFAR-sized student wants 32 px.

Normalisation: the per-channel mean/std widely used for STL-10
((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)); kdjax has not recomputed them
(no STL-10 download on this project's machines).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from kdjax.data import cifar
from kdjax.data.base import Dataset, DatasetNotFoundError
from kdjax.data.resize import resize_images

NAME = "stl10"
NUM_CLASSES = 10
NATIVE_SIZE = 96
MEAN_STD = ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713))
UNLABELLED_SPLIT = "unlabelled"  # TFDS's spelling
_READ_BATCH = 5_000


def _read_split(builder: Any, tfds: Any, split: str, image_size: int,
                labelled: bool) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 images resized to `image_size` (0: native), int32 labels; -1 if not `labelled`)."""
  ds = builder.as_dataset(split=split, shuffle_files=False)
  ds = ds.map(lambda x: {"image": x["image"], "label": x["label"]}).batch(_READ_BATCH)
  images, labels = [], []
  for batch in tfds.as_numpy(ds):
    batch_images = batch["image"].astype(np.uint8, copy=False)
    images.append(resize_images(batch_images, image_size) if image_size else batch_images)
    # TFDS already gives -1 there; forced so that no unlabelled image ever carries a class.
    labels.append(batch["label"] if labelled else np.full(len(batch_images), -1))
  return np.concatenate(images), np.concatenate(labels).astype(np.int32)


def load(data_dir: str | None = None, download: bool = False, unlabelled: bool = False,
         image_size: int = 0) -> Dataset:
  """Loads TFDS `stl10` (train [+ unlabelled with label -1], test), resized to `image_size` if > 0."""
  tfds = cifar._import_tfds()  # pylint: disable=protected-access  (the same TFDS access as CIFAR)
  if data_dir is not None:
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
  builder = tfds.builder(NAME, data_dir=data_dir)
  root = os.fspath(builder.data_dir_root)
  advice = cifar._fix_advice  # pylint: disable=protected-access
  if download:
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except  (offline: any error means "no data")
      cause = " ".join(f"{type(e).__name__}: {e}".split())
      raise DatasetNotFoundError(f"Could not download and prepare TFDS dataset '{NAME}' into "
                                 f"data_dir={root}: {cause}\n"
                                 + advice(NAME, root, offer_download=False)) from e
  elif not builder.is_prepared() and not cifar._tfds_is_mocked(tfds):  # pylint: disable=protected-access
    raise DatasetNotFoundError(
        f"TFDS dataset '{NAME}' {builder.version} is not prepared in data_dir={root} (looked for "
        f"{builder.data_dir}) and download=False, so nothing was fetched.\n" + advice(NAME, root))
  train_images, train_labels = _read_split(builder, tfds, "train", image_size, labelled=True)
  if unlabelled:
    extra_images, extra_labels = _read_split(builder, tfds, UNLABELLED_SPLIT, image_size,
                                             labelled=False)
    train_images = np.concatenate([train_images, extra_images])
    train_labels = np.concatenate([train_labels, extra_labels])
  test_images, test_labels = _read_split(builder, tfds, "test", image_size, labelled=True)
  mean, std = MEAN_STD
  return Dataset(name=NAME, train_images=train_images, train_labels=train_labels,
                 test_images=test_images, test_labels=test_labels, num_classes=NUM_CLASSES,
                 mean=mean, std=std)
