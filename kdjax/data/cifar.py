"""CIFAR-10 / CIFAR-100 from TFDS, read once into uint8 NumPy arrays.

Reads with `builder.as_dataset(split)` + `.batch()` and concatenates, rather than
`batch_size=-1`: under `tfds.testing.mock_data` the latter crashes the process
(std::length_error in TF's `from_generator`), and this way real and mocked data
go through the same code.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from kdjax.data.base import Dataset, DatasetNotFoundError

# Normalisation of the reference code (RepDistiller / mdistiller, docs/protocol.md §1.2); the released
# CRD teachers were trained with the CIFAR-100 pair.
MEAN_STD = {
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
_READ_BATCH = 10_000


def _import_tfds() -> Any:
  """Imports tensorflow_datasets after hiding every accelerator from TensorFlow."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  # TF must not grab GPU/TPU memory that JAX needs; it only decodes images on the host.
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):
      pass  # TF was initialised earlier (by the caller, who then chose its devices).
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tfds


def _tfds_is_mocked(tfds: Any) -> bool:
  """Whether we run inside `tfds.testing.mock_data` (which replaces `download_and_prepare`)."""
  # The mock points builders at a metadata directory without data files, so `is_prepared()` is
  # False although `as_dataset` works; recognise the patched method by its defining module.
  method = tfds.core.DatasetBuilder.download_and_prepare
  return getattr(method, "__module__", "").startswith("tensorflow_datasets.testing")


def _fix_advice(name: str, data_dir: str, offer_download: bool = True) -> str:
  """How to get `name` into `data_dir`: the text shared by every not-found message."""
  download = "; or set --config.data.download=True to download it now" if offer_download else ""
  return (
      f"Fix: on a machine with internet run\n"
      f"  python -c \"import tensorflow_datasets as tfds; "
      f"tfds.builder('{name}', data_dir='{data_dir}').download_and_prepare()\"\n"
      f"(or `tfds build {name} --data_dir={data_dir}`; in tfds 4.9.10 that CLI also needs "
      f"`pip install apache-beam`), copy {data_dir} here if it was another machine, and pass "
      f"--config.data.data_dir={data_dir}{download}.")


def _read_split(builder: Any, tfds: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads one split into (uint8 images, int32 labels)."""
  ds = builder.as_dataset(split=split, shuffle_files=False)
  # Keep only what we use (cifar100 also carries `coarse_label` and `id`): `label` is the fine label.
  ds = ds.map(lambda x: {"image": x["image"], "label": x["label"]}).batch(_READ_BATCH)
  images, labels = [], []
  for batch in tfds.as_numpy(ds):
    images.append(batch["image"])
    labels.append(batch["label"])
  return (np.concatenate(images).astype(np.uint8, copy=False),
          np.concatenate(labels).astype(np.int32))


def load(name: str, data_dir: str | None = None, download: bool = False) -> Dataset:
  """Loads TFDS `cifar10`/`cifar100`; raises DatasetNotFoundError at once if not prepared and not `download`."""
  if name not in MEAN_STD:
    raise ValueError(f"unknown CIFAR dataset {name!r}; valid: {', '.join(MEAN_STD)}")
  tfds = _import_tfds()
  if data_dir is not None:
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
  # Building a builder only reads code and local metadata: no network access.
  builder = tfds.builder(name, data_dir=data_dir)
  root = os.fspath(builder.data_dir_root)
  where = f"data_dir={root}" + (" (TFDS's default; $TFDS_DATA_DIR changes it)"
                                if data_dir is None else "")
  if download:
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except  (offline: any error means "no data")
      cause = " ".join(f"{type(e).__name__}: {e}".split())
      raise DatasetNotFoundError(
          f"Could not download and prepare TFDS dataset '{name}' into {where}: {cause}\n"
          + _fix_advice(name, root, offer_download=False)) from e
  elif not builder.is_prepared() and not _tfds_is_mocked(tfds):
    raise DatasetNotFoundError(
        f"TFDS dataset '{name}' {builder.version} is not prepared in {where} (looked for "
        f"{builder.data_dir}) and download=False, so nothing was fetched.\n"
        + _fix_advice(name, root))
  train_images, train_labels = _read_split(builder, tfds, "train")
  test_images, test_labels = _read_split(builder, tfds, "test")
  mean, std = MEAN_STD[name]
  return Dataset(
      name=name,
      train_images=train_images,
      train_labels=train_labels,
      test_images=test_images,
      test_labels=test_labels,
      num_classes=int(builder.info.features["label"].num_classes),
      mean=mean,
      std=std,
  )
