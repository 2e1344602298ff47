"""RandAugment as FixMatch's CIFAR code defines it (and MLKD's release copies), on device.

Per image: two operations drawn uniformly, with replacement, from fourteen, each with a
magnitude drawn uniformly from its range (FixMatch's `RandAugmentMC`-style list without a
global magnitude: `min + (max - min) * U`), then Cutout of a square of side U(0, 0.5) x width
filled with (125, 123, 114), centred at a point drawn uniformly from (1, width] (the release's
`np.random.uniform(w)`, whose single argument is the *low* bound). The operations reproduce
Pillow's arithmetic on uint8 RGB images (Pillow 13, `ImageOps`, `ImageEnhance`, NEAREST affine
transforms in 16.16 fixed point, the SMOOTH kernel with its copied border, float32 blends
truncated toward zero), written for batches with `jax.vmap`:

| op | magnitude | Pillow |
|---|---|---|
| AutoContrast | - | per-channel min/max stretch (exact quotient; Pillow's double LUT can be one level lower for 0.4% of (min, max, value) triples) |
| Brightness, Color, Contrast, Sharpness | [0.05, 0.95] | `Image.blend(degenerate, image, v)` |
| Equalize | - | `ImageOps.equalize` (step = (n - last bin) // 255) |
| Identity | - | |
| Posterize | [4, 8) -> int bits | `ImageOps.posterize` |
| Rotate | [-30, 30) degrees | `img.rotate(v)`, NEAREST, black fill |
| ShearX/Y | [-0.3, 0.3) | AFFINE (1, v, 0, 0, 1, 0) / (1, 0, 0, v, 1, 0) |
| Solarize | [0, 256) | `ImageOps.solarize(threshold=v)` |
| TranslateX/Y | [-0.3, 0.3) x size | AFFINE with offset v * size |

tests/test_randaugment.py checks every operation against Pillow and the whole augmentation's
output statistics against the release's PIL pipeline.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# (name, low, high) in the release's `augment_list` order.
OPS = (("auto_contrast", 0.0, 1.0), ("brightness", 0.05, 0.95), ("color", 0.05, 0.95),
       ("contrast", 0.05, 0.95), ("equalize", 0.0, 1.0), ("identity", 0.0, 1.0), ("posterize", 4.0, 8.0),
       ("rotate", -30.0, 30.0), ("sharpness", 0.05, 0.95), ("shear_x", -0.3, 0.3), ("shear_y", -0.3, 0.3),
       ("solarize", 0.0, 256.0), ("translate_x", -0.3, 0.3), ("translate_y", -0.3, 0.3))
CUTOUT_FILL = (125, 123, 114)


def _trunc_u8(x: jax.Array) -> jax.Array:
  """float32 -> int32 as C's cast of a non-negative float to UINT8 after clamping to [0, 255]."""
  return jnp.floor(jnp.clip(x, 0.0, 255.0)).astype(jnp.int32)


def blend(degenerate: jax.Array, image: jax.Array, v: jax.Array) -> jax.Array:
  """`Image.blend(degenerate, image, v)` for v in [0, 1]: trunc(d + v * (i - d)) in float32."""
  d = degenerate.astype(jnp.float32)
  return _trunc_u8(d + v.astype(jnp.float32) * (image.astype(jnp.float32) - d))


def grayscale(image: jax.Array) -> jax.Array:
  """Pillow's RGB -> L: (R 19595 + G 38470 + B 7471 + 32768) >> 16, shape (H, W)."""
  return (image[..., 0] * 19595 + image[..., 1] * 38470 + image[..., 2] * 7471 + 32768) >> 16


def lut(image: jax.Array, table: jax.Array) -> jax.Array:
  """Per-channel lookup: table (3, 256) applied to an (H, W, 3) image, values clipped to [0, 255]."""
  table = jnp.clip(table, 0, 255)
  return jnp.stack([table[c][image[..., c]] for c in range(3)], axis=-1)


def histogram(image: jax.Array) -> jax.Array:
  """(3, 256) pixel counts per channel."""
  return jax.vmap(lambda ch: jnp.bincount(ch.reshape(-1), length=256), in_axes=-1)(image)


def auto_contrast(image: jax.Array, v: jax.Array) -> jax.Array:
  del v
  lo, hi = jnp.min(image, axis=(0, 1)), jnp.max(image, axis=(0, 1))
  i = jnp.arange(256)[None, :]
  span = jnp.maximum(hi - lo, 1)[:, None]
  stretched = jnp.maximum(i - lo[:, None], 0) * 255 // span
  return lut(image, jnp.where((hi > lo)[:, None], stretched, i))


def brightness(image: jax.Array, v: jax.Array) -> jax.Array:
  return blend(jnp.zeros_like(image), image, v)


def color(image: jax.Array, v: jax.Array) -> jax.Array:
  return blend(jnp.broadcast_to(grayscale(image)[..., None], image.shape), image, v)


def contrast(image: jax.Array, v: jax.Array) -> jax.Array:
  gray = grayscale(image)
  mean = jnp.floor(jnp.sum(gray).astype(jnp.float32) / gray.size + 0.5).astype(jnp.int32)
  return blend(jnp.full_like(image, mean), image, v)


def equalize(image: jax.Array, v: jax.Array) -> jax.Array:
  del v
  h = histogram(image)  # (3, 256)
  nonzero = h > 0
  last = jnp.take_along_axis(h, (255 - jnp.argmax(nonzero[:, ::-1], axis=1))[:, None], axis=1)[:, 0]
  step = (jnp.sum(h, axis=1) - last) // 255
  n = step[:, None] // 2 + jnp.cumsum(h, axis=1) - h  # before adding bin i
  i = jnp.arange(256)[None, :]
  keep = (jnp.sum(nonzero, axis=1) <= 1) | (step == 0)
  return lut(image, jnp.where(keep[:, None], i, n // jnp.maximum(step, 1)[:, None]))


def identity(image: jax.Array, v: jax.Array) -> jax.Array:
  del v
  return image


def posterize(image: jax.Array, v: jax.Array) -> jax.Array:
  bits = jnp.maximum(v.astype(jnp.int32), 1)
  mask = ~((1 << (8 - bits)) - 1)
  return image & mask


def solarize(image: jax.Array, v: jax.Array) -> jax.Array:
  return jnp.where(image.astype(jnp.float32) < v, image, 255 - image)


def _fix(value: jax.Array) -> jax.Array:
  """Pillow's 16.16 fixed point: floor(v * 65536 + 0.5)."""
  return jnp.floor(value * 65536.0 + 0.5).astype(jnp.int32)


def affine_nearest(image: jax.Array, a: tuple) -> jax.Array:
  """`img.transform(size, AFFINE, a, NEAREST)` with black fill, for a shear or rotation (Pillow's
  fixed-point path): input (x, y) = ((A2 + y A1 + x A0) >> 16, (A5 + y A4 + x A3) >> 16)."""
  a0, a1, a2, a3, a4, a5 = a
  h, w = image.shape[:2]
  big0, big1, big3, big4 = _fix(a0), _fix(a1), _fix(a3), _fix(a4)
  big2, big5 = _fix(a2 + a0 * 0.5 + a1 * 0.5), _fix(a5 + a3 * 0.5 + a4 * 0.5)
  y, x = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
  xin = (big2 + y * big1 + x * big0) >> 16
  yin = (big5 + y * big4 + x * big3) >> 16
  inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
  picked = image[jnp.clip(yin, 0, h - 1), jnp.clip(xin, 0, w - 1)]
  return jnp.where(inside[..., None], picked, 0)


def rotate(image: jax.Array, v: jax.Array) -> jax.Array:
  """`img.rotate(v)` about the centre (w / 2, h / 2), NEAREST, black fill."""
  h, w = image.shape[:2]
  angle = -v * (math.pi / 180.0)
  c, s = jnp.cos(angle), jnp.sin(angle)
  cx, cy = w / 2.0, h / 2.0
  return affine_nearest(image, (c, s, c * -cx + s * -cy + cx, -s, c, -s * -cx + c * -cy + cy))


def shear_x(image: jax.Array, v: jax.Array) -> jax.Array:
  return affine_nearest(image, (1.0, v, 0.0, 0.0, 1.0, 0.0))


def shear_y(image: jax.Array, v: jax.Array) -> jax.Array:
  return affine_nearest(image, (1.0, 0.0, 0.0, v, 1.0, 0.0))


def _translate(image: jax.Array, dx: jax.Array, dy: jax.Array) -> jax.Array:
  """AFFINE (1, 0, dx, 0, 1, dy), Pillow's scale path: input x = trunc(x + 0.5 + dx), -1 if negative."""
  h, w = image.shape[:2]
  coord = lambda t: jnp.where(t < 0, -1, jnp.floor(t)).astype(jnp.int32)
  xin = coord(jnp.arange(w) + 0.5 + dx)
  yin = coord(jnp.arange(h) + 0.5 + dy)
  inside = ((yin >= 0) & (yin < h))[:, None] & ((xin >= 0) & (xin < w))[None, :]
  picked = image[jnp.clip(yin, 0, h - 1)][:, jnp.clip(xin, 0, w - 1)]
  return jnp.where(inside[..., None], picked, 0)


def translate_x(image: jax.Array, v: jax.Array) -> jax.Array:
  return _translate(image, v * image.shape[1], jnp.float32(0.0))


def translate_y(image: jax.Array, v: jax.Array) -> jax.Array:
  return _translate(image, jnp.float32(0.0), v * image.shape[0])


def smooth(image: jax.Array) -> jax.Array:
  """Pillow's SMOOTH filter (3x3, [1 1 1; 1 5 1; 1 1 1] / 13): float32 sums, row y+1 first, + 0.5,
  truncated; the one-pixel border copied from the input."""
  k_side, k_mid = jnp.float32(1.0) / jnp.float32(13.0), jnp.float32(5.0) / jnp.float32(13.0)
  f = image.astype(jnp.float32)

  def row(r, centre):  # KERNEL1x3 of row r: in[x-1]*k0 + in[x]*k1 + in[x+1]*k2
    return r[:, :-2] * k_side + r[:, 1:-1] * centre + r[:, 2:] * k_side

  ss = jnp.float32(0.5) + row(f[2:], k_side)
  ss = ss + row(f[1:-1], k_mid)
  ss = ss + row(f[:-2], k_side)
  return image.at[1:-1, 1:-1].set(_trunc_u8(ss))


def sharpness(image: jax.Array, v: jax.Array) -> jax.Array:
  return blend(smooth(image), image, v)


BRANCHES = (auto_contrast, brightness, color, contrast, equalize, identity, posterize, rotate, sharpness,
            shear_x, shear_y, solarize, translate_x, translate_y)  # OPS' order


def cutout(image: jax.Array, key: jax.Array) -> jax.Array:
  """The release's Cutout(U(0, 0.5)): a square of side v = U(0, 0.5) * width, its corner
  int(max(0, c - v / 2)) for c ~ U(1, width] (and likewise for y), to int(min(width, corner + v))
  inclusive, filled with CUTOUT_FILL."""
  h, w = image.shape[:2]
  k_size, k_x, k_y = jax.random.split(key, 3)
  v = jax.random.uniform(k_size, ()) * 0.5 * w
  x0 = jnp.floor(jnp.maximum(0.0, w + (1.0 - w) * jax.random.uniform(k_x, ()) - v / 2)).astype(jnp.int32)
  y0 = jnp.floor(jnp.maximum(0.0, w + (1.0 - w) * jax.random.uniform(k_y, ()) - v / 2)).astype(jnp.int32)
  x1 = jnp.floor(jnp.minimum(float(w), x0 + v)).astype(jnp.int32)
  y1 = jnp.floor(jnp.minimum(float(w), y0 + v)).astype(jnp.int32)
  y, x = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
  inside = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1) & (v > 0)
  return jnp.where(inside[..., None], jnp.asarray(CUTOUT_FILL, image.dtype), image)


def apply_op(image: jax.Array, index: jax.Array, v: jax.Array) -> jax.Array:
  """Operation `index` of OPS with magnitude `v` on one (H, W, 3) int32 image."""
  return jax.lax.switch(index, BRANCHES, image, v)


def rand_augment_one(key: jax.Array, image: jax.Array, num_ops: int = 2) -> jax.Array:
  """One uint8 (H, W, 3) image: `num_ops` random operations, then Cutout."""
  k_ops, k_vals, k_cut = jax.random.split(key, 3)
  indices = jax.random.randint(k_ops, (num_ops,), 0, len(OPS))
  lows = jnp.asarray([lo for _, lo, _ in OPS], jnp.float32)
  highs = jnp.asarray([hi for _, _, hi in OPS], jnp.float32)
  u = jax.random.uniform(k_vals, (num_ops,))
  out = image.astype(jnp.int32)
  for j in range(num_ops):
    v = lows[indices[j]] + (highs[indices[j]] - lows[indices[j]]) * u[j]
    out = apply_op(out, indices[j], v)
  return cutout(out, k_cut).astype(image.dtype)


def rand_augment(key: jax.Array, images: jax.Array, num_ops: int = 2) -> jax.Array:
  """A (B, H, W, 3) uint8 batch, each image with its own operations and magnitudes."""
  return jax.vmap(lambda k, im: rand_augment_one(k, im, num_ops))(jax.random.split(key, images.shape[0]), images)
