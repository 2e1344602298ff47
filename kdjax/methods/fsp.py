"""FSP: A Gift from Knowledge Distillation (Yim et al., CVPR 2017).

An initialisation, not a loss of the main training (RepDistiller `--distill fsp`,
`distiller_zoo/FSP.py`, `helper/pretrain.py`). The "flow" between consecutive stage maps
f_i, f_{i+1} (all post-ReLU stage outputs including the stem, `feats`, RepDistiller
`feat[:-1]`), the larger of the two average-pooled to the smaller one's size, is the matrix

    G_i[c, d] = mean_{h,w} f_{i+1}[h, w, c] * f_i[h, w, d]        (C_{i+1} x C_i, per sample)
    L_init = sum_i mean_{b,c,d} (G_i^S - G_i^T)^2

It needs equal channel counts stage by stage (RepDistiller raises otherwise; so FSP has no
published result for WRN-40-2 -> WRN-40-1 nor across families). For `init_epochs` = 30 epochs
before the main training, L_init moves the student's feature layers (not its classifier head,
`_common.student_head`) with PyTorch SGD at the student's LR (constant), momentum 0.9, weight
decay 5e-4. The main training is CE only (RepDistiller's FSP term there is 0; `-b 50`
multiplies nothing).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from kdjax.errors import UserError
from kdjax.methods import _common, base, registry


def fsp_matrices(feats: Sequence[jax.Array]) -> list[jax.Array]:
  """G_i (B, C_{i+1}, C_i) of consecutive NHWC maps, the larger of each pair pooled first."""
  out = []
  for bottom, top in zip(feats[:-1], feats[1:]):
    bottom, top = _common.match_spatial(bottom, top)
    positions = bottom.shape[1] * bottom.shape[2]
    out.append(jnp.einsum("bhwc,bhwd->bcd", top, bottom) / positions)
  return out


def fsp_loss(g_s: Sequence[jax.Array], g_t: Sequence[jax.Array]) -> jax.Array:
  """sum over consecutive pairs of the mean squared difference of the FSP matrices."""
  pairs = zip(fsp_matrices(_common.f32(g_s)), fsp_matrices(_common.f32(g_t)))
  return sum((jnp.mean(jnp.square(s - t)) for s, t in pairs), jnp.float32(0.0))


def _check_channels(g_s: Sequence[jax.Array], g_t: Sequence[jax.Array]) -> None:
  c_s, c_t = [f.shape[-1] for f in g_s], [f.shape[-1] for f in g_t]
  if c_s != c_t:
    raise UserError(f"FSP needs equal channel counts at every stage; the student has {c_s}, the "
                    f"teacher {c_t}. Its published pairs are the same-family ones of configs/"
                    "fsp_cifar.py.")


@registry.register("fsp", defaults=dict(ce_weight=1.0, init_epochs=30, init_lr=0.0))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """FSP with `cfg.fsp.{ce_weight, init_epochs, init_lr}` (0 LR: the run's `optim.lr`)."""
  c = cfg.fsp

  def init(rng, student_out, teacher_out, data_info):
    del rng, data_info
    t_out = _common.single_teacher(teacher_out, "fsp")
    _check_channels(student_out[1]["feats"], t_out[1]["feats"])
    return {}, {}

  def init_loss(params, state, student_out, teacher_out, batch, progress):
    del params, batch, progress
    t_out = _common.single_teacher(teacher_out, "fsp")
    value = fsp_loss(student_out[1]["feats"], jax.lax.stop_gradient(t_out[1]["feats"]))
    return value, {"loss_fsp": value}, state

  prestage = _common.init_prestage(cfg, c, init_loss, _common.trains_student_features(cfg.model))
  return base.Method(name="fsp", needs_teacher=True, loss=_common.ce_only_loss(float(c.ce_weight)),
                     init=init, trains=_common.trains_student, prestage=prestage)
