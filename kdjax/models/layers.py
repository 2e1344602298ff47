"""Building blocks shared by the model zoo, with PyTorch's conventions.

Every convolution pads explicitly and symmetrically (PyTorch `padding=p`), never
'SAME': on a stride-2 3x3 conv 'SAME' pads (0, 1) where PyTorch pads (1, 1), which
shifts the windows by a pixel and breaks imported weights. BatchNorm uses
PyTorch's momentum 0.1 (Flax momentum 0.9) and epsilon 1e-5.
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


def batch_norm(train: bool, *, name: str | None = None, dtype: Any = None,
               scale_init: Any = nn.initializers.ones) -> nn.BatchNorm:
  """BatchNorm with PyTorch's running-average momentum (0.1) and epsilon (1e-5)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      name=name, dtype=dtype, scale_init=scale_init)


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
