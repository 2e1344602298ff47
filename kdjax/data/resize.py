"""Resizing whole image splits once on the host (TensorFlow's antialiased bilinear)."""
from __future__ import annotations

import numpy as np

from kdjax.data import cifar

_RESIZE_CHUNK = 5_000  # images per tf.image.resize call: bounds the float32 temporaries


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """uint8 (N, H, W, C) -> uint8 (N, size, size, C), antialiased bilinear (area-aware when shrinking)."""
  if images.shape[1:3] == (size, size):
    return images
  cifar._import_tfds()  # pylint: disable=protected-access  (hides accelerators from TF first)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = [np.clip(np.rint(tf.image.resize(images[i:i + _RESIZE_CHUNK], (size, size), method="bilinear",
                                         antialias=True).numpy()), 0, 255).astype(np.uint8)
         for i in range(0, len(images), _RESIZE_CHUNK)]
  return np.concatenate(out) if out else np.zeros((0, size, size, images.shape[-1]), np.uint8)
