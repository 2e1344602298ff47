"""kdjax's on-device RandAugment against Pillow: each operation on the same images and magnitudes,
Cutout's geometry, and the statistics of the whole augmentation against the release's PIL code."""
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from kdjax.data import randaugment as ra

# The release's operations (MLKD's mdistiller/dataset/cifar100.py, FixMatch's list), on PIL images.
PIL_OPS = {
    "auto_contrast": lambda img, v: ImageOps.autocontrast(img),
    "brightness": lambda img, v: ImageEnhance.Brightness(img).enhance(v),
    "color": lambda img, v: ImageEnhance.Color(img).enhance(v),
    "contrast": lambda img, v: ImageEnhance.Contrast(img).enhance(v),
    "equalize": lambda img, v: ImageOps.equalize(img),
    "identity": lambda img, v: img,
    "posterize": lambda img, v: ImageOps.posterize(img, max(1, int(v))),
    "rotate": lambda img, v: img.rotate(v),
    "sharpness": lambda img, v: ImageEnhance.Sharpness(img).enhance(v),
    "shear_x": lambda img, v: img.transform(img.size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
    "shear_y": lambda img, v: img.transform(img.size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
    "solarize": lambda img, v: ImageOps.solarize(img, v),
    "translate_x": lambda img, v: img.transform(img.size, Image.AFFINE, (1, 0, v * img.size[0], 0, 1, 0)),
    "translate_y": lambda img, v: img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, v * img.size[1])),
}


def _images(n, seed=0):
  """CIFAR-like test images: smooth random fields with noise, plus low-contrast ones."""
  rng = np.random.default_rng(seed)
  small = rng.uniform(0, 255, (n, 6, 6, 3))
  big = np.asarray(jax.image.resize(small, (n, 32, 32, 3), "bilinear"))
  imgs = np.clip(big + rng.normal(0, 12, big.shape), 0, 255)
  imgs[: n // 4] = 80 + 0.3 * imgs[: n // 4]  # narrow ranges: auto-contrast, equalize at work
  return imgs.astype(np.uint8)


@pytest.mark.parametrize("index", range(len(ra.OPS)))
def test_each_operation_reproduces_pillow(index):
  name, lo, hi = ra.OPS[index]
  images = _images(24, seed=index)
  values = np.random.default_rng(100 + index).uniform(lo, hi, len(images)).astype(np.float32)
  ours = np.asarray(jax.jit(jax.vmap(lambda im, v: ra.apply_op(im, index, v)))(
      jnp.asarray(images, jnp.int32), jnp.asarray(values)))
  theirs = np.stack([np.asarray(PIL_OPS[name](Image.fromarray(im), float(v))) for im, v in zip(images, values)])
  assert np.mean(theirs != images) > 0.4 or name == "identity"  # the magnitudes do something
  equal = np.mean(ours == theirs)
  if name == "auto_contrast":
    # Pillow's double-precision LUT is one level below the exact quotient for 0.4% of (min, max,
    # value) triples; measured here 0.9994 of the pixels equal, never more than one level apart.
    assert equal >= 0.995 and np.max(np.abs(ours.astype(int) - theirs.astype(int))) <= 1
  elif name in ("rotate", "shear_x", "shear_y"):
    # float32 coefficients before Pillow's 16.16 rounding: equal here, a pixel may move in rare cases.
    assert equal >= 0.999, (name, equal)
  else:
    np.testing.assert_array_equal(ours, theirs, err_msg=name)


def _release_cutout(img, v):
  """The release's Cutout(img, v) (v in [0, 0.5]) with numpy's RNG as it calls it."""
  if v <= 0.0:
    return img
  v = v * img.size[0]
  w, h = img.size
  x0, y0 = np.random.uniform(w), np.random.uniform(h)  # low=w, high=1: values in (1, w]
  x0, y0 = int(max(0, x0 - v / 2.0)), int(max(0, y0 - v / 2.0))
  x1, y1 = min(w, x0 + v), min(h, y0 + v)
  img = img.copy()
  ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), ra.CUTOUT_FILL)
  return img


def _release_rand_augment(img, n=2):
  ops = random.choices(list(range(len(ra.OPS))), k=n)
  for i in ops:
    name, lo, hi = ra.OPS[i]
    img = PIL_OPS[name](img, lo + float(hi - lo) * random.random())
  return _release_cutout(img, random.random() * 0.5)


def test_cutout_covers_what_the_releases_rectangle_covers():
  """Same corner and size drawn: the same pixels filled (Pillow's rectangle is inclusive)."""
  key = jax.random.key(3)
  img = _images(1)[0]
  ours = np.asarray(ra.cutout(jnp.asarray(img, jnp.int32), key))
  k_size, k_x, k_y = jax.random.split(key, 3)
  v = float(jax.random.uniform(k_size, ())) * 0.5
  cx, cy = (32 + (1 - 32) * float(jax.random.uniform(k, ())) for k in (k_x, k_y))
  size = v * 32
  x0, y0 = int(max(0, cx - size / 2)), int(max(0, cy - size / 2))
  theirs = Image.fromarray(img)
  ImageDraw.Draw(theirs).rectangle((x0, y0, min(32, x0 + size), min(32, y0 + size)), ra.CUTOUT_FILL)
  np.testing.assert_array_equal(ours, np.asarray(theirs))
  assert np.any(ours != img)


def test_the_whole_augmentation_has_the_releases_output_statistics():
  """Mean and spread per channel, the share of black (affine fill) and Cutout-coloured pixels and
  of pixels left unchanged: kdjax's batch against the release's PIL pipeline on the same images."""
  images = np.tile(_images(64, seed=9), (8, 1, 1, 1))  # 512 images, each drawn 8 times
  ours = np.asarray(jax.jit(ra.rand_augment)(jax.random.key(0), jnp.asarray(images)))
  random.seed(0)
  np.random.seed(0)
  theirs = np.stack([np.asarray(_release_rand_augment(Image.fromarray(im))) for im in images])
  stats = lambda x: dict(mean=x.mean(axis=(0, 1, 2)), std=x.std(axis=(0, 1, 2)),
                         black=np.mean(np.all(x == 0, -1)), cut=np.mean(np.all(x == ra.CUTOUT_FILL, -1)),
                         same=np.mean(np.all(x == images, -1)))
  a, b = stats(ours.astype(float)), stats(theirs.astype(float))
  np.testing.assert_allclose(a["mean"], b["mean"], rtol=0.04)
  np.testing.assert_allclose(a["std"], b["std"], rtol=0.05)
  for k in ("black", "cut", "same"):
    assert abs(a[k] - b[k]) < 0.03, (k, a[k], b[k])
  assert ours.dtype == np.uint8 and ours.shape == images.shape
