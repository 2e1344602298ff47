"""Numerics and plumbing shared by the feature baselines (a leading '_': not a method file).

* `l2_normalize`: PyTorch's `F.normalize` (divide by max(||x||, eps)) written as
  x * rsqrt(max(sum x^2, eps^2)), so value and gradient are finite at x = 0
  (docs/methods.md §8.4), where `x / jnp.linalg.norm(x)` gives NaN gradients.
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
import optax

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


# ---------------------------------------------------------------- pre-stage helpers (AB, FT, FSP)

# Top-level student parameter groups outside RepDistiller's `get_feat_modules()`: the layers its
# AB/FSP initialisation leaves alone (not in the init optimizer: no update, no weight decay).
# WRN's final `bn1` is among them although it makes the pre-ReLU f3 (RepDistiller lists only
# conv1 and block1-3); MobileNetV2's and ShuffleV2's last 1x1 conv + BN come after the last tap.
_STUDENT_HEADS = {"MobileNetV2": ("conv2", "classifier"), "ShuffleV2": ("conv2", "bn2", "linear")}
_WRN_HEAD = ("bn1", "fc")
# CIFAR ResNet `fc`, ResNet50 / ShuffleV1 `linear`, VGG `classifier`.
_DEFAULT_HEAD = ("fc", "linear", "classifier")


def student_head(arch: str) -> tuple[str, ...]:
  """Top-level parameter groups of `arch` that are not its feature layers (RepDistiller's view)."""
  if arch.startswith("wrn_"):
    return _WRN_HEAD
  return _STUDENT_HEADS.get(arch, _DEFAULT_HEAD)


def trains_student(path: base.ParamPath) -> bool:
  """Mask of a pass that moves the student only (the method's own modules stay as they are)."""
  return path[0] == "student"


def trains_student_features(arch: str) -> Callable[[base.ParamPath], bool]:
  """Mask moving the method's params and the student's feature layers, not its classifier head."""
  head = student_head(arch)

  def trains(path: base.ParamPath) -> bool:
    return path[0] == "method" or (path[0] == "student" and path[1] not in head)

  return trains


def constant_lr_sgd(lr: float, momentum: float, weight_decay: float,
                    nesterov: bool = False) -> Callable[[int], optax.GradientTransformation]:
  """`Update.optimizer` of a pre-stage: PyTorch SGD (coupled L2, momentum) at a constant LR."""

  def make(steps_per_epoch: int) -> optax.GradientTransformation:
    del steps_per_epoch  # RepDistiller's `init()` never changes the LR
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(lr, momentum=momentum or None, nesterov=nesterov))

  return make


def constant_lr(lr: float) -> Callable[[int], optax.Schedule]:
  """`Update.learning_rate` of `constant_lr_sgd(lr, ...)`: what the prestage logs as its LR."""
  return lambda steps_per_epoch: optax.constant_schedule(lr)


def ce_only_loss(ce_weight: float) -> base.LossFn:
  """Main-stage loss of the initialisation-only methods (AB, FSP): `ce_weight * CE`, state as is."""

  def loss(params, state, student_out, teacher_out, batch, progress):
    del params, teacher_out, progress
    ce = base.cross_entropy(student_out[0], batch["label"])
    return ce_weight * ce, {"loss_ce": ce}, state

  return loss
