"""AB: Knowledge Transfer via Distillation of Activation Boundaries (Heo et al., AAAI 2019).

An initialisation, not a loss of the main training (RepDistiller `--distill abound`,
`helper/pretrain.py`). For `init_epochs` epochs before the main training, the student's
pre-ReLU stage maps s_k (`preact_feats[1:]`, RepDistiller `feat[1:-1]` with `preact=True`),
passed through a connector c_k, learn the teacher's activation boundaries t_k:

    ab_k = sum_{b,h,w,c} (c_k(s) + m)^2 [c_k(s) > -m, t <= 0] + (c_k(s) - m)^2 [c_k(s) <= m, t > 0]
    L_init = sum_k 2^(k - n) * ab_k / B * 3 / 1000,    k = 1..n, margin m = 1

(the deepest stage has weight 1). The connector is identity where the two maps have equal
channels and height, else RepDistiller's `ConvReg` without its ReLU: a conv picked by the
heights (student twice the teacher's: 3x3 stride 2; half: 4x4 stride-2 transposed; otherwise
a 'valid' conv of kernel 1 + H_S - H_T), then BatchNorm (train mode, statistics in the method
state). The pre-stage moves the connectors and the student's feature layers — everything but
the classifier head (`_common.student_head`, RepDistiller's `get_feat_modules()`) — with
PyTorch SGD at the student's LR (constant), momentum 0.9, weight decay 5e-4.

The main training is then CE only (RepDistiller's AB term in `train_distill` is 0; `-b 1`
multiplies nothing), so the published numbers are "AB initialisation + CE". The connectors are
not used, trained or exported after the pre-stage.

Conventions (⚠ where RepDistiller's module modes cannot be copied by a generic pre-stage):
* RepDistiller puts the student in eval mode and then its feature modules back in train mode,
  so every student BN that makes a tapped map runs on batch statistics — as kdjax's student
  does. The BNs outside the feature modules (WRN's final `bn1`, which makes the pre-ReLU f3;
  MobileNetV2's and ShuffleV2's last 1x1 conv's BN, after the taps) stay in eval mode there;
  kdjax's pre-stage runs the whole student in train mode, so those use batch statistics and
  their running statistics move (their scale and shift are left untouched, as there).
* Connectors exist only for pairs whose stage lists have equal lengths (RepDistiller asserts).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kdjax.errors import UserError
from kdjax.methods import _common, base, fitnet, registry

# RepDistiller's `ABLoss` rescaling: the sum over elements is divided by the batch and x 3/1000.
_SCALE = 3.0 / 1000.0


def Connector(s_shape: tuple[int, int, int], t_shape: tuple[int, int, int]) -> nn.Module:  # pylint: disable=invalid-name
  """RepDistiller `ConvReg(use_relu=False)` (NHWC): FitNet's regressor without the ReLU."""
  return fitnet.ConvReg(tuple(s_shape), tuple(t_shape), use_relu=False, method="AB",
                        fix="the pair's stage maps are not supported by RepDistiller's connector.")


def needs_connector(s_shape: tuple[int, ...], t_shape: tuple[int, ...]) -> bool:
  """RepDistiller's rule: identity iff channels and heights agree (NHWC shapes (H, W, C))."""
  return s_shape[-1] != t_shape[-1] or s_shape[0] != t_shape[0]


def stage_pairs(student_feats: dict[str, Any],
                teacher_feats: dict[str, Any]) -> list[tuple[jax.Array, jax.Array]]:
  """Float32 (student, teacher) pre-ReLU maps of the stages after the stem."""
  g_s, g_t = student_feats["preact_feats"][1:], teacher_feats["preact_feats"][1:]
  if len(g_s) != len(g_t):
    raise UserError(f"AB pairs the stages after the stem one to one; the student has {len(g_s)}, "
                    f"the teacher {len(g_t)}. Choose a pair with equal stage counts.")
  return [tuple(_common.f32([f_s, f_t])) for f_s, f_t in zip(g_s, g_t)]


def boundary_l2(source: jax.Array, target: jax.Array, margin: float) -> jax.Array:
  """RepDistiller's `criterion_alternative_l2`: summed L2 on the wrong side of each boundary."""
  on = (source > -margin) & (target <= 0)   # the teacher's neuron is off: push s below -m
  off = (source <= margin) & (target > 0)   # the teacher's neuron is on: push s above m
  return jnp.sum(jnp.where(on, jnp.square(source + margin), 0.0)
                 + jnp.where(off, jnp.square(source - margin), 0.0))


def ab_loss(params: dict[str, Any], batch_stats: dict[str, Any],
            pairs: list[tuple[jax.Array, jax.Array]], margin: float) -> tuple[jax.Array, Any]:
  """(sum_k 2^(k-n) ab_k / B * 3/1000, the connectors' new BN statistics); BN in train mode."""
  n, batch = len(pairs), pairs[0][0].shape[0]
  total, new_stats = jnp.float32(0.0), {}
  for k, (f_s, f_t) in enumerate(pairs):
    name = f"connector{k + 1}"
    if name in params:
      f_s, mutated = Connector(f_s.shape[1:], f_t.shape[1:]).apply(
          {"params": params[name], "batch_stats": batch_stats[name]}, f_s, train=True,
          mutable=["batch_stats"])
      new_stats[name] = mutated["batch_stats"]
    weight = 2.0 ** (k - n + 1)
    total = total + weight * boundary_l2(f_s, f_t, margin) / batch * _SCALE
  return total, new_stats


@registry.register("ab", defaults=dict(ce_weight=1.0, margin=1.0, init_epochs=30, init_lr=0.0))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """AB with `cfg.ab.{ce_weight, margin, init_epochs, init_lr}` (0 LR: the run's `optim.lr`)."""
  c = cfg.ab
  margin = float(c.margin)

  def init(rng, student_out, teacher_out, data_info):
    del data_info
    t_out = _common.single_teacher(teacher_out, "ab")
    params, stats = {}, {}
    for k, (f_s, f_t) in enumerate(stage_pairs(student_out[1], t_out[1])):
      if needs_connector(f_s.shape[1:], f_t.shape[1:]):
        variables = Connector(f_s.shape[1:], f_t.shape[1:]).init(
            jax.random.fold_in(rng, k), jnp.zeros_like(f_s), train=False)
        params[f"connector{k + 1}"] = variables["params"]
        stats[f"connector{k + 1}"] = variables["batch_stats"]
    return params, {"batch_stats": stats}

  def init_loss(params, state, student_out, teacher_out, batch, progress):
    del batch, progress
    t_out = _common.single_teacher(teacher_out, "ab")
    pairs = stage_pairs(student_out[1], jax.lax.stop_gradient(t_out[1]))
    value, stats = ab_loss(params, state["batch_stats"], pairs, margin)
    return value, {"loss_ab": value}, {"batch_stats": stats}

  prestage = _common.init_prestage(cfg, c, init_loss, _common.trains_student_features(cfg.model))
  return base.Method(name="ab", needs_teacher=True, loss=_common.ce_only_loss(float(c.ce_weight)),
                     init=init, trains=_common.trains_student, prestage=prestage)
