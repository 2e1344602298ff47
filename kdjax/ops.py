"""Array operations with PyTorch's exact semantics that models and methods share.

* `l2_normalize`: `F.normalize` (x / max(||x||, eps)) as x * rsqrt(max(sum x^2, eps^2)),
  finite in value and gradient at x = 0 (docs/methods.md §8.4);
* `norm`: `torch.linalg.norm` along an axis, whose gradient at x = 0 is 0 as torch's is
  (jnp.linalg.norm's is NaN there);
* `adaptive_avg_pool`: `F.adaptive_avg_pool2d` bins [floor(i n/o), ceil((i+1) n/o)) on NHWC;
* `nearest_resize`: `F.interpolate(mode='nearest')` (legacy nearest: src = floor(dst * in/out)
  with a float32 scale) on NHWC;
* `CLASSIFIER_NAMES`: the top-level names of the zoo's classifier layers.
"""
from __future__ import annotations

from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

Size = Union[int, Sequence[int]]

# CIFAR ResNet / WRN / ImageNet ResNet `fc`, ResNet50 / ShuffleNets `linear`, VGG / MobileNets `classifier`.
CLASSIFIER_NAMES = ("fc", "linear", "classifier")


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||_2, eps) along `axis` (torch `F.normalize`), finite gradient at x = 0."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  # max(||x||, eps) = sqrt(max(||x||^2, eps^2)); the max keeps rsqrt away from 0 in both passes.
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def norm(x: jax.Array, axis: int = -1) -> jax.Array:
  """||x||_2 along `axis` with torch's gradient: 0, not NaN, where x = 0."""
  sq = jnp.sum(jnp.square(x), axis=axis)
  positive = sq > 0
  # Both branches of the where are differentiated: the inner where keeps sqrt's derivative finite.
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _pair(size: Size) -> tuple[int, int]:
  return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def pool_bin(i: int, n_out: int, n_in: int) -> tuple[int, int]:
  """[start, end) of adaptive-pooling bin i of n_out over n_in positions: [floor(i n/o), ceil((i+1) n/o))."""
  return (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)


def pool_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) averaging weights of the adaptive-pooling bins (`pool_bin`)."""
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    start, end = pool_bin(i, n_out, n_in)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x: jax.Array, size: Size) -> jax.Array:
  """`F.adaptive_avg_pool2d(x, size)` on an NHWC map (`size` an int or (height, width))."""
  n, h, w, c = x.shape
  oh, ow = _pair(size)
  if h % oh == 0 and w % ow == 0:  # equal bins: a plain block mean
    return jnp.mean(x.reshape(n, oh, h // oh, ow, w // ow, c), axis=(2, 4))
  rows = jnp.asarray(pool_matrix(h, oh), x.dtype)
  cols = jnp.asarray(pool_matrix(w, ow), x.dtype)
  # HIGHEST: no TF32/bf16 passes on accelerators; pooled maps feed small differences.
  return jnp.einsum("ih,nhwc,jw->nijc", rows, x, cols, precision=jax.lax.Precision.HIGHEST)


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
  """PyTorch legacy 'nearest' source indices: min(floor(dst * (in / out)), in - 1), float32 scale."""
  if n_in == n_out:
    return np.arange(n_out)
  scale = np.float32(n_in) / np.float32(n_out)
  src = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(src, n_in - 1)


def _resize_axis(x: jax.Array, axis: int, n_out: int) -> jax.Array:
  """Nearest resize of one axis; integer ratios as repeat / strided slice, else a gather."""
  n_in = x.shape[axis]
  src = nearest_index(n_in, n_out)
  # Repeat and strided slice differentiate to a reduce and a pad, much cheaper to compile and
  # run than a gather's scatter-add; used only where they pick exactly PyTorch's indices.
  if n_out % n_in == 0 and np.array_equal(src, np.arange(n_out) // (n_out // n_in)):
    return jnp.repeat(x, n_out // n_in, axis=axis)
  if n_in % n_out == 0 and np.array_equal(src, np.arange(n_out) * (n_in // n_out)):
    return jax.lax.slice_in_dim(x, 0, n_in, stride=n_in // n_out, axis=axis)
  return jnp.take(x, src, axis=axis)


def nearest_resize(x: jax.Array, size: Size) -> jax.Array:
  """`F.interpolate(x, size, mode='nearest')` (legacy nearest) on an NHWC map."""
  oh, ow = _pair(size)
  if tuple(x.shape[1:3]) == (oh, ow):
    return x
  return _resize_axis(_resize_axis(x, 1, oh), 2, ow)
