"""CC: Correlation Congruence for Knowledge Distillation (Peng et al., ICCV 2019, arXiv 1904.01802).

Trainable linear embeddings (with bias, no normalisation) map the student's and the
teacher's pooled features to `embed_dim`; with delta = |e_S - e_T| (B, embed_dim),

    L = w_ce * CE + w_cc * mean_{i < B-1} sum_d delta_{i,d} * delta_{i+1,d}

i.e. the correlation term over consecutive batch pairs of the code the CC authors
supplied to RepDistiller (`distiller_zoo/CC.py`). The teacher's features are
constants, but its embedding is trained (RepDistiller puts `embed_t` in the optimiser):
both embeddings are method params, optimised with weight decay and excluded from the
exported student.

CIFAR-100 settings (RepDistiller `--distill correlation -a 0 -b 0.02`, `--feat_dim 128`):
CE 1, CC 0.02, embed_dim 128. mdistiller has no CC; RepDistiller was followed.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kdjax.methods import _common, base, registry
from kdjax.models import layers


def _embedding(in_features: int, embed_dim: int) -> nn.Dense:
  """A PyTorch-initialised `nn.Linear(in_features, embed_dim)`."""
  return layers.dense(embed_dim, in_features)


def _pooled(student_feats: dict[str, Any],
            teacher_feats: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
  """Float32 pooled features (B, D_s), (B, D_t)."""
  f_s, f_t = student_feats["pooled"], teacher_feats["pooled"]
  return tuple(_common.f32([f_s.reshape(f_s.shape[0], -1), f_t.reshape(f_t.shape[0], -1)]))


def correlation_loss(e_s: jax.Array, e_t: jax.Array) -> jax.Array:
  """mean over consecutive batch pairs of sum_d |e_s - e_t|_i,d * |e_s - e_t|_{i+1},d."""
  delta = jnp.abs(e_s - e_t)
  return jnp.mean(jnp.sum(delta[:-1] * delta[1:], axis=1))


@registry.register("cc", defaults=dict(ce_weight=1.0, feat_weight=0.02, embed_dim=128))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """CC with `cfg.cc.{ce_weight, feat_weight, embed_dim}` (CIFAR: 1, 0.02, 128)."""
  c = cfg.cc
  dim = int(c.embed_dim)

  def init(rng, student_out, teacher_out, data_info):
    del data_info
    t_out = _common.single_teacher(teacher_out, "cc")
    f_s, f_t = _pooled(student_out[1], t_out[1])
    k_s, k_t = jax.random.split(rng)
    return {"embed_s": _embedding(f_s.shape[1], dim).init(k_s, f_s)["params"],
            "embed_t": _embedding(f_t.shape[1], dim).init(k_t, f_t)["params"]}, {}

  def term(params, state, student_feats, teacher_feats):
    f_s, f_t = _pooled(student_feats, teacher_feats)
    e_s = _embedding(f_s.shape[1], dim).apply({"params": params["embed_s"]}, f_s)
    e_t = _embedding(f_t.shape[1], dim).apply({"params": params["embed_t"]}, f_t)
    return correlation_loss(e_s, e_t), state

  return _common.ce_plus_feature_method("cc", float(c.ce_weight), float(c.feat_weight), term, init)
