"""Tests for kdjax.data: TFDS loading (mocked), the missing-data error, digits, augmentation."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import data
from kdjax.data import augment
from kdjax.data import digits

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- TFDS (CIFAR)


@pytest.mark.parametrize("name,num_classes", [("cifar100", 100), ("cifar10", 10)])
def test_cifar_loads_under_mock_data(name, num_classes, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    # An empty data_dir: the mock replaces it, and mocked data must load with download=False.
    ds = data.load(name, data_dir=str(tmp_path))
  assert ds.name == name
  assert ds.num_classes == num_classes
  for images, labels in [(ds.train_images, ds.train_labels), (ds.test_images, ds.test_labels)]:
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (12,) and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < num_classes
  assert len(ds.mean) == 3 and len(ds.std) == 3


def test_cifar_normalisation_constants():
  from kdjax.data import cifar  # pylint: disable=import-outside-toplevel
  assert cifar.MEAN_STD["cifar100"] == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
  assert cifar.MEAN_STD["cifar10"] == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def test_missing_data_raises_at_once(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  # Import TF before timing: its import alone takes 5-15 s on a loaded 2-core machine, and what
  # this test guards against is a network attempt or a hang, not a slow import.
  pytest.importorskip("tensorflow")
  empty = str(tmp_path / "tfds")
  start = time.monotonic()
  with pytest.raises(data.DatasetNotFoundError) as info:
    data.load("cifar100", data_dir=empty)
  assert time.monotonic() - start < 20
  message = str(info.value)
  assert empty in message
  assert "data_dir" in message
  assert "download_and_prepare" in message and "--config.data.download=True" in message


def test_unknown_name():
  with pytest.raises(ValueError, match="cifar100"):
    data.load("mnist")
  assert data.names() == ["cifar10", "cifar100", "digits", "imagenet2012", "stl10"]


def test_import_and_digits_need_no_tensorflow():
  code = ("import sys, kdjax.data as d; d.load('digits'); "
          "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
  subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits_ds():
  return data.load("digits")


def test_digits_shapes(digits_ds):
  ds = digits_ds
  assert ds.num_classes == 10
  assert ds.train_images.shape[1:] == ds.test_images.shape[1:] == (32, 32, 3)
  assert ds.train_images.dtype == ds.test_images.dtype == np.uint8
  assert ds.train_labels.dtype == ds.test_labels.dtype == np.int32
  assert len(ds.train_images) + len(ds.test_images) == 1797
  assert abs(len(ds.test_images) / 1797 - 0.2) < 0.01
  assert ds.train_images.max() == 255 and ds.train_images.min() == 0
  # Grayscale replicated to three channels.
  np.testing.assert_array_equal(ds.train_images[..., 0], ds.train_images[..., 2])


def test_digits_deterministic(digits_ds):
  again = data.load("digits")
  np.testing.assert_array_equal(digits_ds.train_images, again.train_images)
  np.testing.assert_array_equal(digits_ds.train_labels, again.train_labels)
  np.testing.assert_array_equal(digits_ds.test_images, again.test_images)
  np.testing.assert_array_equal(digits_ds.test_labels, again.test_labels)
  assert digits_ds.mean == again.mean and digits_ds.std == again.std


def test_digits_split_disjoint_and_stratified(digits_ds):
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  labels = load_digits().target
  train, test = digits.stratified_split(labels)
  assert not set(train) & set(test)
  np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
  for split_labels in (digits_ds.train_labels, digits_ds.test_labels):
    np.testing.assert_array_equal(np.unique(split_labels), np.arange(10))
  for c in range(10):  # every class is split 80/20
    n_c = (labels == c).sum()
    assert abs((digits_ds.test_labels == c).sum() - 0.2 * n_c) <= 1


def test_digits_statistics_from_train(digits_ds):
  pixels = digits_ds.train_images.reshape(-1, 3) / 255.0
  np.testing.assert_allclose(digits_ds.mean, pixels.mean(0), rtol=1e-6)
  np.testing.assert_allclose(digits_ds.std, pixels.std(0), rtol=1e-6)


def test_digits_resize_keeps_constant_images_constant():
  out = digits.to_rgb32(np.full((1, 8, 8), 16.0))
  assert (out == 255).all()


# ---------------------------------------------------------------- augmentation

# One jitted function, and few distinct (batch, padding, flip), keep compilation time low.
_crop_flip = jax.jit(augment.random_crop_flip, static_argnames=("padding", "flip"))
_BATCH = 16


def _random_images(n: int, seed: int = 0, size: int = 32) -> np.ndarray:
  return np.random.RandomState(seed).randint(0, 256, (n, size, size, 3)).astype(np.uint8)


def _coordinate_images(n: int, size: int = 32) -> np.ndarray:
  """Channel 0 = row + 1, channel 1 = col + 1, so a crop's offsets and flips can be read back."""
  rows, cols = np.meshgrid(np.arange(size) + 1, np.arange(size) + 1, indexing="ij")
  image = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)
  return np.repeat(image[None], n, axis=0)


def _crops(image: np.ndarray, padding: int) -> list[np.ndarray]:
  h, w, _ = image.shape
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  return [padded[i:i + h, j:j + w] for i in range(2 * padding + 1) for j in range(2 * padding + 1)]


def test_augment_shape_dtype_under_jit():
  # The key is traced, not static: one compilation serves every step of a training run.
  out = _crop_flip(jax.random.key(9), jnp.asarray(_random_images(_BATCH, seed=8)), padding=4,
                   flip=True)
  assert out.shape == (_BATCH, 32, 32, 3) and out.dtype == jnp.uint8


def test_augment_identity_without_padding_and_flip():
  images = _random_images(_BATCH)
  out = _crop_flip(jax.random.key(1), jnp.asarray(images), padding=0, flip=False)
  np.testing.assert_array_equal(np.asarray(out), images)


@pytest.mark.parametrize("flip", [False, True])
def test_augment_output_is_a_crop_of_zero_padded_input(flip):
  images = _random_images(_BATCH, seed=2)
  out = np.asarray(_crop_flip(jax.random.key(2), jnp.asarray(images), padding=4, flip=flip))
  for image, result in zip(images[:6], out[:6]):
    candidates = _crops(image, 4)
    if flip:
      candidates += [c[:, ::-1] for c in candidates]
    assert any(np.array_equal(result, c) for c in candidates)


def test_augment_offsets_uniform_and_flip_probability():
  n, padding = 4000, 4
  out = np.asarray(_crop_flip(
      jax.random.key(3), jnp.asarray(_coordinate_images(n)), padding=padding, flip=True))
  col_a, col_b = out[:, 16, 16, 1].astype(int), out[:, 16, 17, 1].astype(int)
  flipped = col_b == col_a - 1  # columns run backwards after a flip
  assert (flipped | (col_b == col_a + 1)).all()
  assert abs(flipped.mean() - 0.5) < 0.04
  # Output (16, 16) is crop pixel (16, 16), or (16, 15) when flipped, i.e. input pixel
  # (16 + dy - padding, 16 [or 15] + dx - padding), stored as index + 1.
  dy = out[:, 16, 16, 0].astype(int) - 17 + padding
  dx = col_a - 17 + flipped + padding
  for offsets in (dy, dx):
    counts = np.bincount(offsets, minlength=2 * padding + 1)
    assert len(counts) == 2 * padding + 1  # nothing outside [0, 2 * padding]
    np.testing.assert_allclose(counts / n, 1 / (2 * padding + 1), atol=0.03)


def test_augment_keys():
  images = jnp.asarray(_random_images(_BATCH, seed=5))
  a = _crop_flip(jax.random.key(6), images, padding=4, flip=True)
  b = _crop_flip(jax.random.key(6), images, padding=4, flip=True)
  c = _crop_flip(jax.random.key(7), images, padding=4, flip=True)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_normalize_matches_numpy():
  images = _random_images(3, seed=10)
  mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
  out = augment.normalize(jnp.asarray(images), mean, std)
  assert out.dtype == jnp.float32
  expected = (images.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6, atol=1e-6)
  # Zero padding becomes -mean/std, as in the PyTorch reference.
  zero = augment.normalize(jnp.zeros((1, 1, 1, 3), jnp.uint8), mean, std)
  np.testing.assert_allclose(np.asarray(zero).ravel(), -np.float32(mean) / np.float32(std),
                             rtol=1e-6)


# ---------------------------------------------------------------- STL-10, image_size


@pytest.fixture(scope="module")
def stl10_variants():
  """Mocked STL-10 loaded as labelled only, with its unlabelled split, and resized to 32."""
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    return {"plain": data.load("stl10"), "unlabelled": data.load("stl10", unlabelled=True),
            "resized": data.load("stl10", unlabelled=True, image_size=32)}


def test_stl10_loads_under_mock_data(stl10_variants):
  from kdjax.data import stl10  # pylint: disable=import-outside-toplevel
  ds = stl10_variants["plain"]
  assert ds.name == "stl10" and ds.num_classes == 10
  assert (ds.mean, ds.std) == stl10.MEAN_STD
  for images, labels in [(ds.train_images, ds.train_labels), (ds.test_images, ds.test_labels)]:
    assert images.shape == (6, 96, 96, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() < 10


def test_stl10_unlabelled_split_joins_train_with_label_minus_one(stl10_variants):
  plain, merged = stl10_variants["plain"], stl10_variants["unlabelled"]
  assert merged.train_images.shape == (12, 96, 96, 3)
  # The labelled examples first, unchanged; then the unlabelled ones, all labelled -1.
  np.testing.assert_array_equal(merged.train_images[:6], plain.train_images)
  np.testing.assert_array_equal(merged.train_labels[:6], plain.train_labels)
  np.testing.assert_array_equal(merged.train_labels[6:], -1)
  np.testing.assert_array_equal(merged.test_images, plain.test_images)
  np.testing.assert_array_equal(merged.test_labels, plain.test_labels)


def test_stl10_resized_at_load_time(stl10_variants):
  merged, resized = stl10_variants["unlabelled"], stl10_variants["resized"]
  assert resized.train_images.shape == (12, 32, 32, 3) and resized.test_images.shape == (6, 32, 32, 3)
  np.testing.assert_array_equal(resized.train_labels, merged.train_labels)
  # Resized batch by batch while reading == the whole split resized afterwards.
  np.testing.assert_array_equal(resized.train_images, data.resize_images(merged.train_images, 32))
  np.testing.assert_array_equal(resized.test_images, data.resize_images(merged.test_images, 32))


def test_image_size_resizes_every_split_of_any_dataset():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=5):
    native = data.load("cifar10")
    small = data.load("cifar10", image_size=16)
  assert small.train_images.shape == (5, 16, 16, 3) and small.test_images.shape == (5, 16, 16, 3)
  np.testing.assert_array_equal(small.train_labels, native.train_labels)
  np.testing.assert_array_equal(small.train_images, data.resize_images(native.train_images, 16))
  assert data.load("digits", image_size=0).train_images.shape[1:] == (32, 32, 3)
  assert data.load("digits", image_size=24).test_images.shape[1:] == (24, 24, 3)


def test_resize_is_antialiased():
  """A 1-pixel checkerboard shrunk 3x averages to grey; constant images stay constant."""
  board = (np.indices((96, 96)).sum(axis=0) % 2 * 255).astype(np.uint8)
  board = np.repeat(board[None, :, :, None], 3, axis=-1)
  out = data.resize_images(board, 32)
  assert out.shape == (1, 32, 32, 3) and out.dtype == np.uint8
  # Without antialiasing bilinear sampling picks near-black/near-white pixels instead.
  assert np.abs(out[:, 2:-2, 2:-2].astype(int) - 127.5).max() <= 30
  constant = np.full((2, 96, 96, 3), 77, np.uint8)
  np.testing.assert_array_equal(data.resize_images(constant, 32), 77)
  assert data.resize_images(constant, 96) is constant  # the native size is left alone


def test_unlabelled_and_bad_image_size_are_clear_errors():
  from kdjax.errors import UserError  # pylint: disable=import-outside-toplevel
  with pytest.raises(UserError, match="only stl10"):
    data.load("cifar10", unlabelled=True)
  with pytest.raises(UserError, match="image_size"):
    data.load("digits", image_size=-1)


def test_tfds_has_no_tiny_imagenet_builder():
  """README and kdjax.data say TFDS 4.9.10 has no Tiny-ImageNet: fails once a TFDS release adds one."""
  tfds = pytest.importorskip("tensorflow_datasets")
  assert not [b for b in tfds.list_builders() if "tiny" in b and "imagenet" in b]
