"""Numerics and plumbing shared by the feature baselines (a leading '_': not a method file).

* `l2_normalize`: PyTorch's `F.normalize` (divide by max(||x||, eps)) written as
  x * rsqrt(max(sum x^2, eps^2)), so value and gradient are finite at x = 0
  (methods.md §8.4), where `x / jnp.linalg.norm(x)` gives NaN gradients.
* `adaptive_avg_pool` / `match_spatial`: `F.adaptive_avg_pool2d` on NHWC maps, and
  the references' rule of pooling the larger of two maps down to the smaller one.
* `ce_plus_feature_method`: the composition every baseline here uses,
  `ce_weight * CE + feat_weight * term` (RepDistiller `-r 1 -a 0 -b w`,
  mdistiller `CE_WEIGHT` / `FEAT_WEIGHT`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.errors import UserError
from kdjax.methods import base

PyTree = Any
Features = dict[str, Any]
# term(params, state, student_features, teacher_features) -> (unweighted term, new state)
TermFn = Callable[[PyTree, PyTree, Features, Features], tuple[jax.Array, PyTree]]


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||_2, eps) along `axis` (torch `F.normalize`), finite gradient at x = 0."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  # max(||x||, eps) = sqrt(max(||x||^2, eps^2)); the max keeps rsqrt away from 0 in both passes.
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def _pool_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) averaging matrix of adaptive pooling windows [floor(i n/o), ceil((i+1) n/o))."""
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """`F.adaptive_avg_pool2d(x, size)` for an NHWC map."""
  b, h, w, c = x.shape
  oh, ow = size
  if h % oh == 0 and w % ow == 0:  # the usual case: equal non-overlapping windows
    return jnp.mean(x.reshape(b, oh, h // oh, ow, w // ow, c), axis=(2, 4))
  x = jnp.einsum("oh,bhwc->bowc", jnp.asarray(_pool_matrix(h, oh), x.dtype), x)
  return jnp.einsum("pw,bowc->bopc", jnp.asarray(_pool_matrix(w, ow), x.dtype), x)


def match_spatial(f_s: jax.Array, f_t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Pools the larger NHWC map (compared by height, as the references do) to the other's size."""
  s_h, t_h = f_s.shape[1], f_t.shape[1]
  if s_h > t_h:
    f_s = adaptive_avg_pool(f_s, f_t.shape[1:3])
  elif s_h < t_h:
    f_t = adaptive_avg_pool(f_t, f_s.shape[1:3])
  return f_s, f_t


def f32(xs: Sequence[jax.Array]) -> list[jax.Array]:
  """Every array of `xs` in float32 at least: feature losses never run in bf16."""
  return [base.at_least_f32(x) for x in xs]


def single_teacher(teacher_out: Any, name: str) -> base.ModelOutput:
  """`teacher_out` as one `(logits, features)` pair; these baselines take a single teacher."""
  if not isinstance(teacher_out, tuple):
    raise UserError(f"method {name!r} distills from one teacher; got {type(teacher_out).__name__}.")
  return teacher_out


def ce_plus_feature_method(name: str, ce_weight: float, feat_weight: float, term: TermFn,
                           init: Callable[..., tuple[PyTree, PyTree]] = base.empty_init,
                           ) -> base.Method:
  """Method with loss `ce_weight * CE + feat_weight * term`; logs `loss_ce`, raw `loss_<name>`."""

  def loss(params, state, student_out, teacher_out, batch, progress):
    del progress
    t_out = single_teacher(teacher_out, name)
    ce = base.cross_entropy(student_out[0], batch["label"])
    value, new_state = term(params, state, student_out[1], jax.lax.stop_gradient(t_out[1]))
    metrics = {"loss_ce": ce, f"loss_{name}": value}
    return ce_weight * ce + feat_weight * value, metrics, new_state

  return base.Method(name=name, needs_teacher=True, loss=loss, init=init)
