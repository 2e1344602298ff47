"""On-device augmentation: pure, jittable functions of an explicit PRNG key.

Matches the PyTorch CIFAR recipe (docs/protocol.md §1.2): RandomCrop(32, padding=4) with
zero padding of the uint8 image, then RandomHorizontalFlip(p=0.5), then normalisation.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax


def random_crop_flip(key: jax.Array, images: jax.Array, padding: int = 4,
                     flip: bool = True) -> jax.Array:
  """Per-image random crop of the zero-padded batch (offsets in [0, 2*padding]), then p=0.5 flips."""
  if images.ndim != 4:
    raise ValueError(f"expected a (B, H, W, C) batch, got shape {images.shape}")
  if padding < 0:
    raise ValueError(f"padding must be >= 0, got {padding}")
  batch, height, width, channels = images.shape
  crop_key, flip_key = jax.random.split(key)
  out = images
  if padding:
    # Zero padding of the raw image (torchvision's default fill), so that padded pixels become
    # -mean/std after normalisation, as in the reference code.
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * padding + 1)

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
      return lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    # vmap of dynamic_slice lowers to one gather over the batch: no per-image Python loop.
    out = jax.vmap(crop)(padded, offsets)
  if flip:
    flips = jax.random.bernoulli(flip_key, 0.5, (batch,))
    out = jnp.where(flips[:, None, None, None], out[:, :, ::-1, :], out)
  return out


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 images -> float32 (x / 255 - mean) / std, per channel (float64 under jax_enable_x64)."""
  dtype = jnp.result_type(float)  # float32, unless x64 is on (float64 parity tests)
  mean = jnp.asarray(mean, dtype)
  std = jnp.asarray(std, dtype)
  return (images.astype(dtype) / 255.0 - mean) / std
