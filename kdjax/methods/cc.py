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

from kdjax.methods import _common
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


def _init(c: ml_collections.ConfigDict, rng, student_feats, teacher_feats):
  """The two embeddings (student and teacher pooled features to `c.embed_dim`)."""
  f_s, f_t = _pooled(student_feats, teacher_feats)
  k_s, k_t = jax.random.split(rng)
  dim = int(c.embed_dim)
  return {"embed_s": _embedding(f_s.shape[1], dim).init(k_s, f_s)["params"],
          "embed_t": _embedding(f_t.shape[1], dim).init(k_t, f_t)["params"]}, {}


def _term(c: ml_collections.ConfigDict, params, state, student_feats, teacher_feats):
  """CC of the embedded pooled features (CIFAR: ce 1, feat 0.02, embed_dim 128)."""
  f_s, f_t = _pooled(student_feats, teacher_feats)
  dim = int(c.embed_dim)
  e_s = _embedding(f_s.shape[1], dim).apply({"params": params["embed_s"]}, f_s)
  e_t = _embedding(f_t.shape[1], dim).apply({"params": params["embed_t"]}, f_t)
  return correlation_loss(e_s, e_t), state


_common.register_feature_method("cc", _term, _init, defaults=dict(ce_weight=1.0, feat_weight=0.02,
                                                                  embed_dim=128))
