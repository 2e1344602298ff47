"""WKD: Lv, Yang & Li (NeurIPS 2024), "Wasserstein Distance Rivals Kullback-Leibler Divergence for
Knowledge Distillation".

Two terms, either or both (`logit_weight`, `feat_weight` > 0), as the release computes them:

* WKD-L, discrete Wasserstein distance between class distributions. With target separation:
  the target class is matched by -mean_b p_t[y] log p_s[y] (no temperature), the C-1
  non-target classes by an entropic optimal-transport distance between softmax(z_s/T) and
  softmax(z_t/T) over them, with the cost C_ij between categories (clamped at 0, + 1e-8) and
  Sinkhorn's `sinkhorn_iter` iterations at regularisation `sinkhorn_lambda` (u starts at
  1/N, each update divides with + 1e-8), the distance sum_ij flow_ij C_ij averaged over the
  batch. The cost is 1 - cosine similarity of the teacher's classifier rows (the release's
  `fc` option), or a K x K matrix from `cost_matrix_path` (.npy; the release ships CKA-based
  ones per teacher, which its CIFAR numbers use); `cost_sharpen` s > 0 maps it to
  1 - exp(-s C).
* WKD-F, continuous (Gaussian) Wasserstein distance between feature distributions: the
  student's map at `hint_layer` through FitNet's ConvReg with BN + ReLU to the teacher's
  shape, then per channel and per cell of a `grid` x `grid` partition (PyTorch's adaptive
  pooling bins) the mean and std = sqrt(unbiased var + eps); the loss is
  `mean_cov_ratio * |mu_s - mu_t|^2 + |std_s - std_t|^2`, summed and divided by B * grid^2.

    L = w_ce * CE + [target term + w_L(e) * WD_L] + w_F(e) * WD_F

where both weights follow the release's cosine decay after epoch `decay_start` (1-based
epochs e: w(e) = w / 2 * (1 + cos(pi (e - start) / (epochs - start))); note the target term
is not weighted. docs/methods.md §1.6.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kdjax import ops
from kdjax.errors import UserError
from kdjax.methods import _common, base, registry
from kdjax.methods import dkd as dkd_lib
from kdjax.methods import fitnet


def sinkhorn_flow(w1: jax.Array, w2: jax.Array, cost: jax.Array, reg: float, iters: int) -> jax.Array:
  """The release's Sinkhorn plan (B, N, N) between the rows of w1 and w2 (B, N) under `cost` (B, N, N)."""
  k = jnp.exp(-cost / reg)
  u = jnp.full_like(w1, 1.0 / w1.shape[-1])
  v = u
  for _ in range(iters):
    v = w2 / (jnp.einsum("bji,bj->bi", k, u) + 1e-8)
    u = w1 / (jnp.einsum("bij,bj->bi", k, v) + 1e-8)
  return u[:, :, None] * k * v[:, None, :]


def wkd_logit_loss(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array, cost: jax.Array,
                   temperature: float, weight: jax.Array, reg: float, iters: int) -> tuple[jax.Array, jax.Array]:
  """(target term, weight * Wasserstein term) over the labelled rows; `cost` is the K x K category cost."""
  z_s, z_t = base.at_least_f32(student_logits), base.at_least_f32(jax.lax.stop_gradient(teacher_logits))
  labelled = labels >= 0
  y = jnp.maximum(labels, 0)
  n = jnp.maximum(jnp.sum(labelled), 1)
  log_ps_y = jnp.take_along_axis(jax.nn.log_softmax(z_s, -1), y[:, None], -1)[:, 0]
  pt_y = jnp.take_along_axis(jax.nn.softmax(z_t, -1), y[:, None], -1)[:, 0]
  target = -jnp.sum(jnp.where(labelled, pt_y * log_ps_y, 0.0)) / n
  _, s_other = dkd_lib.split_target(z_s, y)
  _, t_other = dkd_lib.split_target(z_t, y)
  others = dkd_lib.other_classes(y, z_s.shape[-1])  # (B, C-1) class indices, in order
  pair_cost = cost[others[:, :, None], others[:, None, :]]
  flow = sinkhorn_flow(jax.nn.softmax(s_other / temperature, -1), jax.nn.softmax(t_other / temperature, -1),
                       pair_cost, reg, iters)
  distance = jnp.sum(flow * pair_cost, axis=(1, 2))
  return target, weight * jnp.sum(jnp.where(labelled, distance, 0.0)) / n


def mean_std_cells(f: jax.Array, grid: int, eps: float) -> tuple[jax.Array, jax.Array]:
  """Per channel and cell of a grid x grid partition of an NHWC map: (mean, sqrt(unbiased var + eps))."""
  if grid == 1:
    return jnp.mean(f, axis=(1, 2)), jnp.sqrt(jnp.var(f, axis=(1, 2), ddof=1) + eps)
  h, w = f.shape[1], f.shape[2]
  means, stds = [], []
  for i in range(grid):
    for j in range(grid):
      (h0, h1), (w0, w1) = ops.pool_bin(i, grid, h), ops.pool_bin(j, grid, w)
      block = f[:, h0:h1, w0:w1, :]
      means.append(jnp.mean(block, axis=(1, 2)))
      stds.append(jnp.sqrt(jnp.var(block, axis=(1, 2), ddof=1) + eps))
  return jnp.stack(means, 1), jnp.stack(stds, 1)


def wkd_feature_loss(f_s: jax.Array, f_t: jax.Array, grid: int, eps: float, ratio: float) -> jax.Array:
  """ratio * |mu_s - mu_t|^2 + |std_s - std_t|^2, summed, over B * grid^2 (the Gaussian WD)."""
  mu_s, sd_s = mean_std_cells(f_s, grid, eps)
  mu_t, sd_t = mean_std_cells(f_t, grid, eps)
  scale = f_s.shape[0] * grid * grid
  return (ratio * jnp.sum(jnp.square(mu_s - mu_t)) + jnp.sum(jnp.square(sd_s - sd_t))) / scale


def decayed(weight: float, epoch: jax.Array, start: float, epochs: float) -> jax.Array:
  """The release's cosine decay of a loss weight after 1-based epoch `start` (0-based `epoch` here)."""
  e = jnp.asarray(epoch, float) + 1.0
  cosine = 0.5 * weight * (1.0 + jnp.cos((e - start) / max(epochs - start, 1e-9) * math.pi))
  return jnp.where(e > start, cosine, weight)


def category_cost(teacher_variables, num_classes: int, path: str, sharpen: float) -> jax.Array:
  """The K x K cost between categories: from `path` (.npy), else 1 - cosine of the teacher's classifier rows."""
  if path:
    try:
      cost = np.load(path)
    except (OSError, ValueError) as e:
      raise UserError(f"config.wkd.cost_matrix_path={path!r} cannot be read as a .npy array ({e}).") from None
    if cost.shape != (num_classes, num_classes):
      raise UserError(f"config.wkd.cost_matrix_path={path!r} holds a {cost.shape} array; WKD-L needs "
                      f"{num_classes} x {num_classes}, one cost per pair of classes.")
    cost = jnp.asarray(cost, jnp.float32)
  else:
    params = (teacher_variables or {}).get("params", {})
    layer = next((params[n] for n in ops.CLASSIFIER_NAMES if n in params), None)
    while isinstance(layer, dict) and "kernel" not in layer and len(layer) == 1:
      layer = next(iter(layer.values()))
    if not isinstance(layer, dict) or "kernel" not in layer:
      raise UserError("WKD-L's cost comes from the teacher's classifier, and none was found; "
                      "give a K x K matrix with config.wkd.cost_matrix_path.")
    proto = ops.l2_normalize(jnp.asarray(layer["kernel"], jnp.float32).T, axis=-1)
    cost = 1.0 - proto @ proto.T
  if sharpen:
    cost = 1.0 - jnp.exp(-sharpen * cost)
  return jax.nn.relu(cost) + 1e-8


@registry.register("wkd", defaults=dict(
    ce_weight=1.0, logit_weight=600.0, feat_weight=0.0, decay_start=150.0, temperature=8.0,
    sinkhorn_lambda=0.05, sinkhorn_iter=10, cost_matrix_path="", cost_sharpen=1.0,
    hint_layer=-1, mean_cov_ratio=4.0, grid=1, eps=1e-5))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """WKD-L and/or WKD-F with `cfg.wkd.*` (defaults: the release's WKD-L for resnet32x4 -> resnet8x4)."""
  c = cfg.wkd
  w_ce, w_l, w_f = float(c.ce_weight), float(c.logit_weight), float(c.feat_weight)
  start, epochs, t = float(c.decay_start), float(cfg.epochs), float(c.temperature)
  reg, iters, layer, grid = float(c.sinkhorn_lambda), int(c.sinkhorn_iter), int(c.hint_layer), int(c.grid)
  if w_l <= 0 and w_f <= 0:
    raise UserError("config.wkd: logit_weight and feat_weight are both 0; set one > 0 (WKD-L, WKD-F).")

  def maps(student_out, teacher_out):
    t_out = _common.single_teacher(teacher_out, "wkd")
    f_s, f_t = _common.f32([student_out[1]["feats"][layer], t_out[1]["feats"][layer]])
    return f_s, jax.lax.stop_gradient(f_t)

  def regressor(f_s, f_t):
    return fitnet.ConvReg(tuple(f_s.shape[1:]), tuple(f_t.shape[1:]), method="WKD-F",
                          fix="choose another --config.wkd.hint_layer.")

  def init(rng, student_out, teacher_out, data_info):
    t_out = _common.single_teacher(teacher_out, "wkd")
    params, state = {}, {}
    if w_l > 0:
      state["cost"] = category_cost(data_info["teacher_variables"], t_out[0].shape[-1], str(c.cost_matrix_path),
                                    float(c.cost_sharpen))
    if w_f > 0:
      f_s, f_t = maps(student_out, teacher_out)
      variables = regressor(f_s, f_t).init(rng, jnp.zeros_like(f_s), train=False)
      params["conv_reg"], state["batch_stats"] = variables["params"], variables["batch_stats"]
    return params, state

  def loss(params, state, student_out, teacher_out, batch, progress):
    t_out = _common.single_teacher(teacher_out, "wkd")
    labels = batch["label"]
    ce = base.cross_entropy(student_out[0], labels)
    metrics, total, new_state = {"loss_ce": ce}, w_ce * ce, dict(state)
    if w_l > 0:
      target, wd = wkd_logit_loss(student_out[0], t_out[0], labels, state["cost"], t,
                                  decayed(w_l, progress.epoch, start, epochs), reg, iters)
      metrics.update(loss_wkd_target=target, loss_wkd_logit=wd)
      total = total + target + wd
    if w_f > 0:
      f_s, f_t = maps(student_out, teacher_out)
      projected, mutated = regressor(f_s, f_t).apply(
          {"params": params["conv_reg"], "batch_stats": state["batch_stats"]}, f_s, train=True,
          mutable=["batch_stats"])
      feat = wkd_feature_loss(projected, f_t, grid, float(c.eps), float(c.mean_cov_ratio))
      metrics["loss_wkd_feat"] = feat
      total = total + decayed(w_f, progress.epoch, start, epochs) * feat
      new_state["batch_stats"] = mutated["batch_stats"]
    return total, metrics, new_state

  return base.Method(name="wkd", needs_teacher=True, loss=loss, init=init, needs_teacher_variables=w_l > 0)
