"""scikit-learn's handwritten digits (1797 8x8 images, 10 classes) as a 32x32x3 uint8 dataset.

It ships inside the scikit-learn package, so it is a real dataset for smoke tests and
CPU examples that works without network access or TensorFlow.
"""
from __future__ import annotations

import numpy as np

from kdjax.data.base import Dataset

SIZE = 32
TEST_FRACTION = 0.2
SPLIT_SEED = 0
_MAX_VALUE = 16.0  # load_digits pixel values are integers 0..16


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) linear-interpolation weights with half-pixel centres (edge-clamped)."""
  src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  src = np.clip(src, 0.0, n_in - 1)
  lo = np.floor(src).astype(int)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  weights = np.zeros((n_out, n_in))
  weights[np.arange(n_out), lo] += 1.0 - frac
  weights[np.arange(n_out), hi] += frac
  return weights


def to_rgb32(images: np.ndarray) -> np.ndarray:
  """(N, 8, 8) values 0..16 -> (N, 32, 32, 3) uint8: scale to 0..255, bilinear resize, 3 channels."""
  scaled = images.astype(np.float64) * (255.0 / _MAX_VALUE)
  rows = _bilinear_matrix(images.shape[1], SIZE)
  cols = _bilinear_matrix(images.shape[2], SIZE)
  # Separable bilinear resize: rows @ image @ cols^T for every image.
  resized = np.einsum("ij,njk,lk->nil", rows, scaled, cols)
  gray = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
  return np.repeat(gray[..., None], 3, axis=-1)


def stratified_split(labels: np.ndarray, test_fraction: float = TEST_FRACTION,
                     seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
  """Sorted (train, test) indices holding `test_fraction` of every class in test."""
  # Legacy RandomState: its stream is frozen by NumPy's compatibility policy (NEP 19), so the split
  # is the same on every machine and NumPy version, unlike `default_rng`.
  rng = np.random.RandomState(seed)
  train, test = [], []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    n_test = int(round(len(idx) * test_fraction))
    test.append(idx[:n_test])
    train.append(idx[n_test:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load() -> Dataset:
  """The digits dataset: a deterministic stratified 80/20 split, normalised by train statistics."""
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  raw = load_digits()
  images = to_rgb32(raw.images)
  labels = raw.target.astype(np.int32)
  train, test = stratified_split(labels)
  train_images = images[train]
  pixels = train_images.reshape(-1, 3).astype(np.float64) / 255.0
  mean = tuple(float(m) for m in pixels.mean(axis=0))
  std = tuple(float(s) for s in pixels.std(axis=0))
  return Dataset(
      name="digits",
      train_images=train_images,
      train_labels=labels[train],
      test_images=images[test],
      test_labels=labels[test],
      num_classes=10,
      mean=mean,
      std=std,
  )
