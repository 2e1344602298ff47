"""CRD: Contrastive Representation Distillation (Tian, Krishnan, Isola; ICLR 2020, arXiv 1910.10699).

RepDistiller's CRD (`crd/criterion.py`, `crd/memory.py`, `dataset/cifar100.py`;
mdistiller's `CRD.py` is the same code):

* embeddings e_S = normalise(W_S f_S + b_S), e_T = normalise(W_T f_T + b_T) of the
  pooled features, d -> 128, both trainable (method params, optimised with the student,
  weight-decayed, left out of the exported student);
* two memory banks M_S, M_T of N x 128 rows (N = training-set size), initialised
  U(-stdv, stdv) with stdv = 1 / sqrt(128 / 3);
* per example, K = 16384 contrast indices: the positive (its own index, 'exact' mode;
  a random example of its class, 'relax'), then K negatives drawn uniformly from the
  examples of the *other* classes, without replacement when the example's class has
  at least K negatives and with replacement otherwise (`np.random.choice(...,
  replace=k > len(cls_negative))`);
* scores P = exp(m . e / tau) / Z with tau = 0.07: the student anchor against the
  teacher bank (out_s) and the teacher anchor against the student bank (out_t); each
  normalising constant Z = mean(exp(m . e / tau)) * N is taken from the first batch (a
  constant for the gradient) and then frozen;
* NCE loss per side with P_n = 1 / N, eps 1e-7:
  -(1/B) [sum_b log(P_pos / (P_pos + K P_n + eps)) + sum_{b,neg} log(K P_n / (P_neg + K P_n + eps))],
  L_crd = NCE(out_s) + NCE(out_t);
* after the scores, each bank's rows of the batch become
  normalise(0.5 m + 0.5 e) (momentum 0.5), e without gradient.

L = w_ce * CE + w_crd * L_crd; CIFAR-100 (RepDistiller `--distill crd -a 0 -b 0.8`,
mdistiller `cfg.CRD`): CE 1, CRD 0.8, feat_dim 128, K 16384, tau 0.07, momentum 0.5,
exact mode.

kdjax differences (none changes a number beyond float32 rounding): the non-gradient parts
(both banks, both Z, and the per-class index tables the sampler reads) are the method state,
threaded through the pure train step and checkpointed with it; negatives are drawn on device
from `batch['rng']` (a uniformly random K-subset of the other classes' examples: the first K
of an argsort of uniform keys with the own class's keys pushed last, taken with `top_k`), not
by the data loader; each anchor's K+1 scores are picked from its product with the whole bank
while N <= 16 (K+1) (`contrast_scores`), rather than computed from its gathered rows; log P
is computed as s / tau - log Z, so an underflowing score gives a finite loss where the
reference's log(0) would not; the normalisations use x * rsqrt(max(|x|^2, eps^2)) (equal to
the reference's x / |x| for x != 0).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kdjax import data_parallel, ops
from kdjax.errors import UserError
from kdjax.methods import _common, base, registry
from kdjax.models import layers

NCE_EPS = 1e-7
MODES = ("exact", "relax")
# Scoring every bank row with one matrix product and picking each anchor's K+1 scores does
# N / (K+1) times the multiply-adds of gathering its (K+1, D) rows, but never moves the
# gathered (B, K+1, D) tensor through memory, and holds less while N < (K+1) D. On 2 CPU cores
# (one XLA device, B = 64, K = 16384, forward + backward; experiments/crd_scores.py) the
# product took 21 / 132 / 250 ms at N = 50,000 (CIFAR) / 16 (K+1) / 32 (K+1), the gather
# 215-245 ms throughout. ImageNet's 1.28M rows (78 (K+1)) are gathered.
DENSE_SCORES_MAX_ROWS_PER_CONTRAST = 16


def _embedding(in_features: int, dim: int):
  """RepDistiller's `Embed` linear part: a PyTorch-initialised `nn.Linear(in_features, dim)`."""
  return layers.dense(dim, in_features)


def embed(params: Any, x: jax.Array) -> jax.Array:
  """L2-normalised linear embedding of a (B, ...) feature, flattened per example."""
  x = base.at_least_f32(x.reshape(x.shape[0], -1))
  return ops.l2_normalize(_embedding(x.shape[1], params["kernel"].shape[1]).apply(
      {"params": params}, x), axis=1)


def init_memory(rng: jax.Array, n: int, dim: int) -> jax.Array:
  """(n, dim) bank ~ U(-stdv, stdv), stdv = 1 / sqrt(dim / 3) (RepDistiller's `ContrastMemory`)."""
  stdv = 1.0 / math.sqrt(dim / 3)
  return jax.random.uniform(rng, (n, dim), jnp.float32, -stdv, stdv)


def class_tables(labels: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
  """Per-class index tables: the training labels, indices sorted by class, class starts and sizes."""
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  if labels.size == 0 or labels.min() < 0 or labels.max() >= num_classes:
    raise UserError(f"CRD needs every training label in [0, {num_classes}); got labels in "
                    f"[{labels.min(initial=0)}, {labels.max(initial=0)}].")
  count = np.bincount(labels, minlength=num_classes)
  if np.any(count[labels] == labels.size):
    raise UserError("CRD samples negatives from other classes, but the training set has only one class.")
  start = np.concatenate([[0], np.cumsum(count)[:-1]])
  return {"labels": labels.astype(np.int32),
          "class_order": np.argsort(labels, kind="stable").astype(np.int32),
          "class_start": start.astype(np.int32), "class_count": count.astype(np.int32)}


def smallest_k(keys: jax.Array, k: int) -> jax.Array:
  """Indices of the k smallest of each row of (B, N) `keys` in ascending order, ties by lower
  index: `argsort(keys, axis=1)[:, :k]`, which XLA:CPU ran 2.8x slower (64 x 50,000, k = 16384:
  655 vs 235 ms; experiments/crd_scores.py)."""
  return data_parallel.per_device_rows(lambda rows: jax.lax.top_k(-rows, k)[1])(keys)


def sample_contrast_indices(rng: jax.Array, tables: dict[str, jax.Array], index: jax.Array,
                            labels: jax.Array, k: int, mode: str = "exact") -> jax.Array:
  """(B, K+1) dataset indices: the positive, then K negatives of other classes (see the docstring)."""
  tables = {name: jnp.asarray(v) for name, v in tables.items()}
  n = tables["labels"].shape[0]
  batch = labels.shape[0]
  k_pos, k_rep, k_perm = jax.random.split(rng, 3)
  start, count = tables["class_start"][labels], tables["class_count"][labels]
  n_neg = n - count
  # With replacement: a uniform position among the other classes' examples in class order,
  # skipping the anchor's own class block.
  u = jax.random.randint(k_rep, (batch, k), 0, n_neg[:, None])
  neg = tables["class_order"][u + jnp.where(u >= start[:, None], count[:, None], 0)]
  if k < n:
    # Without replacement (the reference's case whenever K <= #negatives): the K smallest of
    # uniform keys over all N examples, the own class's keys moved past every other (2 > 1).
    keys = jax.random.uniform(k_perm, (batch, n))
    keys = jnp.where(tables["labels"][None, :] == labels[:, None], 2.0, keys)
    without = smallest_k(keys, k).astype(neg.dtype)
    neg = jnp.where((k <= n_neg)[:, None], without, neg)
  if mode == "exact":
    pos = index
  else:  # relax: a random example of the anchor's class
    pos = tables["class_order"][start + jax.random.randint(k_pos, (batch,), 0, count)]
  return jnp.concatenate([pos[:, None].astype(jnp.int32), neg.astype(jnp.int32)], axis=1)


def nce_loss(log_p: jax.Array, n_data: int) -> jax.Array:
  """RepDistiller's `ContrastLoss` of (B, K+1) log-scores log P (column 0: the positive)."""
  m = log_p.shape[1] - 1
  noise = m / float(n_data)  # K * P_n
  p = jnp.exp(log_p)
  log_d1 = log_p[:, 0] - jnp.log(p[:, 0] + noise + NCE_EPS)
  log_d0 = math.log(noise) - jnp.log(p[:, 1:] + noise + NCE_EPS)
  return -(jnp.sum(log_d1) + jnp.sum(log_d0)) / log_p.shape[0]


def contrast_scores(memory: jax.Array, contrast_idx: jax.Array, anchor: jax.Array) -> jax.Array:
  """(B, K+1) scores memory[contrast_idx[b, k]] . anchor[b]; the bank is a constant for the gradient."""
  memory = jax.lax.stop_gradient(memory)
  if memory.shape[0] <= DENSE_SCORES_MAX_ROWS_PER_CONTRAST * contrast_idx.shape[1]:
    return jnp.take_along_axis(anchor @ memory.T, contrast_idx, axis=1)
  return jnp.einsum("bkd,bd->bk", memory[contrast_idx], anchor)


def _update_rows(memory: jax.Array, index: jax.Array, v: jax.Array, momentum: float) -> jax.Array:
  """Rows `index` of the bank become normalise(momentum * m + (1 - momentum) * v)."""
  rows = momentum * memory[index] + (1.0 - momentum) * jax.lax.stop_gradient(v).astype(memory.dtype)
  return memory.at[index].set(ops.l2_normalize(rows, axis=1))


def contrast_loss(e_s: jax.Array, e_t: jax.Array, state: dict[str, Any], index: jax.Array,
                  contrast_idx: jax.Array, temperature: float,
                  momentum: float) -> tuple[jax.Array, dict[str, Any]]:
  """(NCE(out_s) + NCE(out_t), state with updated banks and Z) for given embeddings and indices."""
  mem_s, mem_t = jnp.asarray(state["memory_s"]), jnp.asarray(state["memory_t"])
  n_data = mem_s.shape[0]
  logit_s = contrast_scores(mem_t, contrast_idx, e_s) / temperature  # out_s: student anchor
  logit_t = contrast_scores(mem_s, contrast_idx, e_t) / temperature  # out_t: teacher anchor

  def log_z(logit, z):
    # Z from the first batch (z < 0), a constant for the gradient, then frozen.
    first = jax.lax.stop_gradient(jnp.mean(jnp.exp(logit)) * n_data)
    z = jnp.where(z < 0, first.astype(z.dtype), z)
    return jnp.log(z), z

  log_z_s, z_s = log_z(logit_s, state["z_s"])
  log_z_t, z_t = log_z(logit_t, state["z_t"])
  loss = nce_loss(logit_s - log_z_s, n_data) + nce_loss(logit_t - log_z_t, n_data)
  new_state = dict(state, z_s=z_s, z_t=z_t,
                   memory_s=_update_rows(mem_s, index, e_s, momentum),
                   memory_t=_update_rows(mem_t, index, e_t, momentum))
  return loss, new_state


@registry.register("crd", defaults=dict(ce_weight=1.0, feat_weight=0.8, feat_dim=128,
                                        nce_k=16384, nce_t=0.07, nce_m=0.5, mode="exact"))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """CRD with `cfg.crd.{ce_weight, feat_weight, feat_dim, nce_k, nce_t, nce_m, mode}`."""
  c = cfg.crd
  dim, k, tau, momentum, mode = int(c.feat_dim), int(c.nce_k), float(c.nce_t), float(c.nce_m), str(c.mode)
  ce_weight, feat_weight = float(c.ce_weight), float(c.feat_weight)
  if mode not in MODES:
    raise UserError(f"config.crd.mode must be one of {MODES}, got {mode!r}.")

  def init(rng, student_out, teacher_out, data_info):
    t_out = _common.single_teacher(teacher_out, "crd")
    for key in ("num_train", "train_labels", "num_classes"):
      if key not in data_info:
        raise UserError(f"CRD's memory bank needs data_info[{key!r}] (the training set).")
    n = int(data_info["num_train"])
    tables = class_tables(data_info["train_labels"], int(data_info["num_classes"]))
    if tables["labels"].shape[0] != n:
      raise UserError(f"CRD: {tables['labels'].shape[0]} training labels for num_train={n}.")
    f_s, f_t = (base.at_least_f32(o[1]["pooled"]) for o in (student_out, t_out))
    f_s, f_t = f_s.reshape(f_s.shape[0], -1), f_t.reshape(f_t.shape[0], -1)
    k_s, k_t, k_ms, k_mt = jax.random.split(rng, 4)
    params = {"embed_s": _embedding(f_s.shape[1], dim).init(k_s, f_s)["params"],
              "embed_t": _embedding(f_t.shape[1], dim).init(k_t, f_t)["params"]}
    state = {"memory_s": init_memory(k_ms, n, dim), "memory_t": init_memory(k_mt, n, dim),
             "z_s": -jnp.ones((), jnp.float32), "z_t": -jnp.ones((), jnp.float32),
             "tables": {name: jnp.asarray(v) for name, v in tables.items()}}
    return params, state

  def loss(params, state, student_out, teacher_out, batch, progress):
    del progress
    t_out = _common.single_teacher(teacher_out, "crd")
    ce = base.cross_entropy(student_out[0], batch["label"])
    e_s = embed(params["embed_s"], student_out[1]["pooled"])
    e_t = embed(params["embed_t"], jax.lax.stop_gradient(t_out[1]["pooled"]))
    contrast_idx = sample_contrast_indices(batch["rng"], state["tables"], batch["index"],
                                           batch["label"], k, mode)
    value, new_state = contrast_loss(e_s, e_t, state, batch["index"], contrast_idx, tau, momentum)
    return ce_weight * ce + feat_weight * value, {"loss_ce": ce, "loss_crd": value}, new_state

  return base.Method(name="crd", needs_teacher=True, loss=loss, init=init)
