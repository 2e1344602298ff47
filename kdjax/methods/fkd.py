"""FKD: Feature Kernel Distillation (He & Ozay, ICLR 2022, openreview tBIQEvApZK5).

The student matches the teacher's correlation (cosine) kernel of penultimate features
h(x) (the pooled vector that feeds the classifier, `features['pooled']`) within the
batch, and its own features are regularised (FR):

    rho(a, b) = <h(x_a), h(x_b)> / (||h(x_a)|| ||h(x_b)||)
    L_FK = 1 / (B (B - 1)) * sum_{a != b} (rho_S(a, b) - rho_T(a, b))^2
    L    = w_ce * CE + lambda_FK * L_FK + lambda_FR * mean_a ||h_S(x_a)||^2

The teacher kernel is under stop_gradient. Only the kernel of the student's *inputs*
matters, never the teacher's labels, so FKD has `shared_labels=False`: a teacher
trained on another dataset (CIFAR-100 -> CIFAR-10 / STL-10) distills as well, and an
unlabelled example (label -1) contributes to the kernel and FR but not to CE.

Ensembles (`config.teachers`): rho_T is the mean of the members' correlation kernels
(docs/methods.md §5.2 ⚠; the members' feature widths may differ, their B x B kernels do not).

Open details (docs/methods.md §5.1 ⚠), each a field of `config.fkd`:
* `fr_squared` (default True): the paper's text writes the feature regulariser as the
  squared norm ||f(x, theta)||_2^2 (docs/methods.md §5.1), and kdjax follows the text; the
  only code available (third-party) regularises the batch mean of the unsquared L2
  norm; `fr_squared=False` gives that.
* `fk_weight` = lambda_FK = 300, `fr_weight` = lambda_FR = 0.01: the third-party code's
  defaults, not confirmed as the paper's. There the FR term was the unsquared norm, so
  with `fr_squared=True` and features of norm > 1 the same lambda_FR regularises more.
* the diagonal is excluded by an explicit mask (docs/methods.md: "squared difference over
  off-diagonal pairs"); for non-zero features it is 1 on both sides anyway, but a
  zero feature row has a 0 diagonal here (`F.normalize` semantics), which must not count.
* batch size changes the loss (the kernel is within the batch): the batch is recorded in
  configs/fkd_cifar.py; under data parallelism the kernel is over the global batch.

Numerics: a row is normalised as x * rsqrt(s) with s = sum x^2, the unsquared FR norm is
sqrt(max(s, eps^2)). Rows with s <= eps^2 (all-zero pooled features: dead ReLUs) get a
zero unit vector *and zero gradient* through a double `where` (rsqrt of a safe 1 in the
untaken branch). `F.normalize`'s x / max(||x||, eps) (`_common.l2_normalize`) is as finite
in value but its gradient at a zero row is 1/eps = 1e12 times the upstream one (PyTorch
gives ~1e14 on the tests' inputs), which would wreck the step that meets such a row; the
direction of a zero vector is undefined, so zero is the safe convention. Every row with
s > eps^2 is normalised exactly as `F.normalize` does.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from kdjax.errors import UserError
from kdjax.methods import base, registry

EPS = 1e-12  # torch F.normalize's eps


def unit_rows(h: jax.Array, eps: float = EPS) -> jax.Array:
  """Rows of `h` scaled to unit L2 norm; rows with sum x^2 <= eps^2 become 0 with zero gradient."""
  h = base.at_least_f32(h)
  sq = jnp.sum(jnp.square(h), axis=-1, keepdims=True)
  ok = sq > eps * eps
  # Double where: the untaken branch sees rsqrt(1), so no inf/NaN reaches the gradient.
  return jnp.where(ok, h * jax.lax.rsqrt(jnp.where(ok, sq, 1.0)), 0.0)


def correlation_kernel(h: jax.Array, eps: float = EPS) -> jax.Array:
  """(B, B) cosine similarities of the rows of `h` (B, d); a zero row has a zero row/column."""
  n = unit_rows(h, eps)
  return n @ n.T


def kernel_loss(h_s: jax.Array, teacher_kernel: jax.Array, eps: float = EPS) -> jax.Array:
  """sum_{a != b} (rho_S - rho_T)^2 / (B (B - 1)) against a given (stopped) teacher kernel."""
  b = h_s.shape[0]
  if b < 2:
    raise UserError(f"FKD compares pairs of examples within a batch and needs a batch of at least 2; "
                    f"got {b}.")
  diff = correlation_kernel(h_s, eps) - jax.lax.stop_gradient(base.at_least_f32(teacher_kernel))
  off_diagonal = 1.0 - jnp.eye(b, dtype=diff.dtype)
  return jnp.sum(off_diagonal * jnp.square(diff)) / (b * (b - 1))


def ensemble_kernel(teacher_features: list[jax.Array], eps: float = EPS) -> jax.Array:
  """Mean of the teachers' correlation kernels (one teacher: its kernel), under stop_gradient."""
  kernels = [correlation_kernel(jax.lax.stop_gradient(h), eps) for h in teacher_features]
  return sum(kernels[1:], kernels[0]) / len(kernels)


def feature_regulariser(h_s: jax.Array, squared: bool, eps: float = EPS) -> jax.Array:
  """mean_a ||h_S(x_a)||^2 (`squared`) or mean_a ||h_S(x_a)||, finite gradient at a zero row."""
  sq = jnp.sum(jnp.square(base.at_least_f32(h_s)), axis=-1)
  if squared:
    return jnp.mean(sq)
  # sqrt(max(., eps^2)): the max keeps sqrt's derivative away from 0 (torch's norm has
  # gradient 0 at a zero row; so does this, as the max selects the constant).
  return jnp.mean(jnp.sqrt(jnp.maximum(sq, eps * eps)))


def fkd_terms(student_pooled: jax.Array, teacher_pooled: list[jax.Array],
              fr_squared: bool) -> tuple[jax.Array, jax.Array]:
  """(L_FK against the teachers' mean kernel, FR) for pooled features (B, d_s), [(B, d_t), ...]."""
  for h_t in teacher_pooled:
    if h_t.shape[0] != student_pooled.shape[0]:
      raise UserError(f"FKD: teacher batch {h_t.shape[0]} != student batch {student_pooled.shape[0]}.")
  fk = kernel_loss(student_pooled, ensemble_kernel(teacher_pooled))
  return fk, feature_regulariser(student_pooled, fr_squared)


@registry.register("fkd", defaults=dict(ce_weight=1.0, fk_weight=300.0, fr_weight=0.01,
                                        fr_squared=True))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """FKD with `cfg.fkd.{ce_weight, fk_weight, fr_weight, fr_squared}` (1, 300 ⚠, 0.01 ⚠, True ⚠)."""
  c = cfg.fkd
  w_ce, w_fk, w_fr = float(c.ce_weight), float(c.fk_weight), float(c.fr_weight)
  fr_squared = bool(c.fr_squared)

  def loss(params, state, student_out, teacher_out: Any, batch, progress):
    del params, progress
    ce = base.cross_entropy(student_out[0], batch["label"])
    teacher_pooled = [t[1]["pooled"] for t in base.teacher_list(teacher_out)]
    fk, fr = fkd_terms(student_out[1]["pooled"], teacher_pooled, fr_squared)
    metrics = {"loss_ce": ce, "loss_fkd": fk, "loss_fr": fr}
    return w_ce * ce + w_fk * fk + w_fr * fr, metrics, state

  return base.Method(name="fkd", needs_teacher=True, loss=loss, multi_teacher=True,
                     shared_labels=False)
