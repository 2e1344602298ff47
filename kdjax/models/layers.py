"""Building blocks shared by the model zoo, with PyTorch's conventions.

Every convolution pads explicitly and symmetrically (PyTorch `padding=p`), never
'SAME': on a stride-2 3x3 conv 'SAME' pads (0, 1) where PyTorch pads (1, 1), which
shifts the windows by a pixel and breaks imported weights. BatchNorm follows
`torch.nn.BatchNorm2d` exactly (momentum 0.1, epsilon 1e-5, unbiased running
variance), see `BatchNorm`.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's default Conv2d/Linear init is kaiming_uniform(a=sqrt(5)), which is
# variance_scaling(1/3, fan_in, uniform); the CIFAR zoo overrides it per family.
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# kaiming_normal_(mode='fan_out', nonlinearity='relu'): std = sqrt(2 / fan_out).
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_default_bias_init(fan_in: int):
  """PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / max(fan_in, 1) ** 0.5

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def conv(features: int, kernel: int, *, stride: int = 1, padding: int | None = None,
         groups: int = 1, use_bias: bool = False, in_features: int | None = None,
         kernel_init: Any = torch_default_kernel_init, name: str | None = None,
         dtype: Any = None) -> nn.Conv:
  """A 2-D convolution padded like PyTorch's `Conv2d(padding=kernel // 2)`."""
  pad = kernel // 2 if padding is None else padding
  bias_init = nn.initializers.zeros
  if use_bias and in_features is not None:
    bias_init = torch_default_bias_init(in_features // groups * kernel * kernel)
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), feature_group_count=groups,
                 use_bias=use_bias, kernel_init=kernel_init, bias_init=bias_init,
                 name=name, dtype=dtype)


class BatchNorm(nn.Module):
  """`torch.nn.BatchNorm2d` semantics over the last axis, with Flax's variable names.

  Differs from `flax.linen.BatchNorm` in one place that matters for parity: the
  running variance is updated with the unbiased batch variance (n / (n - 1)), as
  PyTorch does, while normalisation uses the biased one. Statistics are computed
  in float32 whatever the compute dtype.
  """
  use_running_average: bool
  momentum: float = 0.1  # PyTorch's convention: new = (1 - m) * old + m * batch
  epsilon: float = 1e-5
  dtype: Any = None
  scale_init: Any = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", self.scale_init, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    # Statistics in float32 at least (float64 when the params are, as in parity tests).
    xf = x.astype(jnp.promote_types(jnp.promote_types(x.dtype, scale.dtype), jnp.float32))
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(xf, axes)
      var = jnp.mean(jnp.square(xf - mean), axes)
      if not self.is_initializing():
        n = x.size // c
        m = self.momentum
        ra_mean.value = (1.0 - m) * ra_mean.value + m * mean
        ra_var.value = (1.0 - m) * ra_var.value + m * var * (n / max(n - 1, 1))
    y = (xf - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias
    return y.astype(self.dtype or x.dtype)


def batch_norm(train: bool, *, name: str | None = None, dtype: Any = None,
               scale_init: Any = nn.initializers.ones) -> BatchNorm:
  """PyTorch BatchNorm2d (momentum 0.1, eps 1e-5, unbiased running variance)."""
  return BatchNorm(use_running_average=not train, name=name, dtype=dtype, scale_init=scale_init)


def dense(features: int, in_features: int, *, name: str | None = None, dtype: Any = None,
          kernel_init: Any = None, bias_init: Any = None) -> nn.Dense:
  """A linear layer initialised like PyTorch's `nn.Linear` unless a family overrides the init."""
  return nn.Dense(features,
                  kernel_init=torch_default_kernel_init if kernel_init is None else kernel_init,
                  bias_init=torch_default_bias_init(in_features) if bias_init is None else bias_init,
                  name=name, dtype=dtype)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """Mean over the spatial axes of an NHWC map."""
  return jnp.mean(x, axis=(1, 2))


max_pool_2x2 = functools.partial(nn.max_pool, window_shape=(2, 2), strides=(2, 2))


class ConvBN(nn.Module):
  """`nn.Sequential(Conv2d, BatchNorm2d)` with children named '0' and '1' like PyTorch's indices."""
  features: int
  kernel: int = 1
  stride: int = 1
  padding: int | None = None
  kernel_init: Any = torch_default_kernel_init
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = conv(self.features, self.kernel, stride=self.stride, padding=self.padding,
             kernel_init=self.kernel_init, name="0", dtype=self.dtype)(x)
    return batch_norm(train, name="1", dtype=self.dtype)(x)


def avg_pool(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
  """PyTorch `AvgPool2d(window, stride, padding)`; padded zeros count in the divisor (count_include_pad)."""
  return nn.avg_pool(x, (window, window), strides=(stride, stride),
                     padding=((padding, padding), (padding, padding)), count_include_pad=True)


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """ShuffleNet's channel shuffle on NHWC: channel i * (C // g) + j moves to position j * g + i.

  PyTorch's NCHW version is reshape(N, g, C/g, H, W) -> swap axes 1, 2 -> reshape; with channels
  last the same permutation is reshape(..., g, C/g) -> swap the last two axes -> reshape.
  """
  n, h, w, c = x.shape
  x = x.reshape(n, h, w, groups, c // groups)
  return jnp.swapaxes(x, 3, 4).reshape(n, h, w, c)
