"""OFD: A Comprehensive Overhaul of Feature Distillation (Heo et al., ICCV 2019, arXiv 1904.01866).

mdistiller's `OFD.py` (RepDistiller has no OFD), on the pre-ReLU stage outputs
`preact_feats[1:]` of both networks, the two lists aligned at their ends (the last
min(n_S, n_T) stages):

* connector per stage: conv1x1 (C_S -> C_T, no bias, N(0, 2 / (k^2 C_T))) then BatchNorm
  (weight 1, bias 0) in train mode, on the student map;
* teacher map adaptive-average-pooled to the student map's (H, W);
* margin per teacher channel from the BatchNorm that precedes the teacher's ReLU at that
  tap (scale gamma, shift beta; s = |gamma|, m = beta): the mean of N(m, s^2) below 0,
  m - s phi(m/s) / Phi(-m/s), where Phi(-m/s) > 0.001, else -3 s;
* partial L2 per element (x student, t teacher, mu margin):
  (x - mu)^2 [x > mu and t <= mu] + (x - t)^2 [x > t and mu < t <= 0] + (x - t)^2 [t > 0],
  summed over (H, W, C) and averaged over the batch;
* stage i of n weighted 1 / 2^(n - i - 1) (the deepest 1).

L = w_ce * CE + w_ofd * L_ofd; CIFAR-100 (mdistiller `cfg.OFD`): CE 1, OFD 0.001, k = 1.
mdistiller runs the teacher's BatchNorms in train mode for OFD (its `train()` override),
so `config.ofd.teacher_bn_mode` defaults to 'batch_stats' ('eval' for the usual frozen teacher).

The teacher BatchNorm of each tap (mdistiller's `get_bn_before_relu`), read from
`data_info['teacher_variables']['params']`, per family: CIFAR ResNet `layer{1,2,3}.<last>.bn2`;
ResNet50 `layer{1..4}.<last>.bn3`; WRN `block2.layer.0.bn1`, `block3.layer.0.bn1`, `bn1`
(the next BN, which is what the WRN preact taps are); VGG `block{1..4}.<last BN>`. Other
teachers (MobileNetV2, ShuffleNets: not an OFD teacher in any published pair; mdistiller's
ShuffleNets refuse too) are refused. The margins are constants and live in the method
state; the connectors' BN running statistics too.

Differences from mdistiller (none affects a published pair): its margins list is indexed
from the front while the feature lists are aligned at the end (only different when the
teacher has more stages than the student); kdjax aligns the margins with the features. A
teacher BN with gamma = 0 (a crash in the reference: division by zero) gets margin min(beta, 0).
"""
from __future__ import annotations

import dataclasses

import math
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kdjax import ops
from kdjax.errors import UserError
from kdjax.methods import _common, base, registry
from kdjax.models import layers

SUPPORTED = "CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4), ResNet50, wrn_*_*, vgg*"


class Connector(nn.Module):
  """mdistiller's OFD connector: conv k x k (no bias, He normal over fan-out) then BatchNorm."""
  t_channels: int
  kernel_size: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    x = layers.conv(self.t_channels, self.kernel_size, padding=(self.kernel_size - 1) // 2,
                    kernel_init=layers.kaiming_normal_fan_out, name="conv")(x)
    return layers.batch_norm(train, name="bn")(x)


def margin_from_bn(scale: jax.Array, bias: jax.Array) -> jax.Array:
  """Per-channel margin: E[x | x < 0] for x ~ N(beta, gamma^2) where P(x < 0) > 0.001, else -3|gamma|."""
  s, m = jnp.abs(base.at_least_f32(scale)), base.at_least_f32(bias)
  positive = s > 0
  s_safe = jnp.where(positive, s, 1.0)  # double-where: no 0/0 for a zero gamma
  z = m / s_safe
  cdf = jax.scipy.stats.norm.cdf(-z)
  usable = positive & (cdf > 0.001)
  pdf = jnp.exp(-0.5 * jnp.square(z)) / math.sqrt(2.0 * math.pi)
  truncated_mean = m - s_safe * pdf / jnp.where(usable, cdf, 1.0)
  margin = jnp.where(usable, truncated_mean, -3.0 * s)
  return jnp.where(positive, margin, jnp.minimum(m, 0.0))


def partial_l2(x: jax.Array, t: jax.Array, margin: jax.Array) -> jax.Array:
  """mdistiller's `feat_loss`: the partial L2 summed over (H, W, C), averaged over the batch."""
  loss = (jnp.where((x > margin) & (t <= margin), jnp.square(x - margin), 0.0)
          + jnp.where((x > t) & (t > margin) & (t <= 0), jnp.square(x - t), 0.0)
          + jnp.where(t > 0, jnp.square(x - t), 0.0))
  return jnp.sum(loss) / x.shape[0]


def _last_block(tree: dict[str, Any], stage: str) -> str:
  """Name of the last numbered child of `tree[stage]` (the last block of a Sequential)."""
  keys = [k for k in tree.get(stage, {}) if str(k).isdigit()]
  if not keys:
    raise KeyError(stage)
  return str(max(keys, key=int))


def bn_before_relu_paths(arch: str, params: dict[str, Any]) -> list[tuple[str, ...]]:
  """Paths (in the teacher's params) of the BatchNorm before the ReLU at each `preact_feats[1:]` tap."""
  try:
    if re.fullmatch(r"resnet\d+(x4)?", arch):
      return [(f"layer{i}", _last_block(params, f"layer{i}"), "bn2") for i in (1, 2, 3)]
    if arch == "ResNet50":
      return [(f"layer{i}", _last_block(params, f"layer{i}"), "bn3") for i in (1, 2, 3, 4)]
    if re.fullmatch(r"wrn_\d+_\d+", arch):
      return [("block2", "layer", "0", "bn1"), ("block3", "layer", "0", "bn1"), ("bn1",)]
    if re.fullmatch(r"vgg\d+", arch):
      paths = []
      for i in (1, 2, 3, 4):
        bns = [k for k, v in params[f"block{i}"].items() if "scale" in v]
        paths.append((f"block{i}", max(bns, key=int)))
      return paths
  except KeyError as e:
    raise UserError(f"OFD: the teacher's parameters have no {e} where a {arch} has it; is "
                    "config.teacher.arch the teacher's architecture?") from None
  raise UserError(f"OFD reads its margins from the teacher's BatchNorms before each ReLU, known for "
                  f"{SUPPORTED}; not for teacher {arch!r} (mdistiller's OFD does not support it either).")


def _lookup(tree: dict[str, Any], path: Sequence[str]) -> dict[str, Any]:
  for key in path:
    if key not in tree:
      raise UserError(f"OFD: no teacher BatchNorm at {'/'.join(path)}.")
    tree = tree[key]
  return tree


def teacher_margins(arch: str, teacher_variables: Any) -> list[jax.Array]:
  """The margins of every `preact_feats[1:]` tap of the teacher `arch`, from its BN params."""
  if not teacher_variables or "params" not in teacher_variables:
    raise UserError("OFD needs the teacher's variables (data_info['teacher_variables']) for its "
                    "margins; this trainer did not pass them.")
  params = teacher_variables["params"]
  out = []
  for path in bn_before_relu_paths(arch, params):
    bn = _lookup(params, path)
    out.append(margin_from_bn(bn["scale"], bn["bias"]))
  return out


def _aligned(*lists: Sequence[Any]) -> list[list[Any]]:
  """Every list cut to its last min-length entries (mdistiller's `_align_list`)."""
  n = min(len(x) for x in lists)
  return [list(x)[len(x) - n:] for x in lists]


def ofd_loss(params: dict[str, Any], batch_stats: dict[str, Any], g_s: Sequence[jax.Array],
             g_t: Sequence[jax.Array], margins: Sequence[jax.Array],
             kernel_size: int) -> tuple[jax.Array, dict[str, Any]]:
  """(sum_i partial_l2(connector_i(s_i), pool(t_i), margin_i) / 2^(n-i-1), connectors' BN stats)."""
  total, new_stats, n = jnp.float32(0.0), {}, len(g_s)
  for i, (f_s, f_t, margin) in enumerate(zip(g_s, g_t, margins)):
    name = f"connector{i}"
    out, mutated = Connector(f_t.shape[-1], kernel_size).apply(
        {"params": params[name], "batch_stats": batch_stats[name]}, f_s, train=True,
        mutable=["batch_stats"])
    new_stats[name] = mutated["batch_stats"]
    target = ops.adaptive_avg_pool(f_t, out.shape[1:3])
    total = total + partial_l2(out, target, margin.astype(out.dtype)) / 2 ** (n - i - 1)
  return total, new_stats


def _teacher_arch(cfg: ml_collections.ConfigDict) -> str:
  """The (single) teacher's architecture: `config.teachers[0]`'s if given, else `teacher.arch`."""
  teachers = tuple(cfg.get("teachers", ()) or ())
  return str(teachers[0]).split("=")[0].strip() if teachers else str(cfg.teacher.arch)


@registry.register("ofd", defaults=dict(ce_weight=1.0, feat_weight=0.001, kernel_size=1,
                                        teacher_bn_mode="batch_stats"))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """OFD with `cfg.ofd.{ce_weight, feat_weight, kernel_size, teacher_bn_mode}` (CIFAR: 1, 0.001, 1,
  batch_stats)."""
  c = cfg.ofd
  kernel = int(c.kernel_size)
  arch = _teacher_arch(cfg)

  def taps(student_feats, teacher_feats):
    return (_common.f32(student_feats["preact_feats"][1:]),
            _common.f32(teacher_feats["preact_feats"][1:]))

  def init(rng, student_out, teacher_out, data_info):
    t_out = _common.single_teacher(teacher_out, "ofd")
    g_s, g_t = taps(student_out[1], t_out[1])
    margins = teacher_margins(arch, data_info.get("teacher_variables"))
    if len(margins) != len(g_t):
      raise UserError(f"OFD: {len(margins)} teacher BatchNorm taps for {len(g_t)} teacher stages.")
    g_s, g_t, margins = _aligned(g_s, g_t, margins)
    params, stats = {}, {}
    for i, (f_s, f_t, margin) in enumerate(zip(g_s, g_t, margins)):
      if margin.shape != (f_t.shape[-1],):
        raise UserError(f"OFD: teacher stage {i} has {f_t.shape[-1]} channels but its BatchNorm "
                        f"{margin.shape[0]}; is config.teacher.arch ({arch}) the teacher's?")
      variables = Connector(f_t.shape[-1], kernel).init(jax.random.fold_in(rng, i),
                                                          jnp.zeros_like(f_s), train=False)
      params[f"connector{i}"] = variables["params"]
      stats[f"connector{i}"] = variables["batch_stats"]
    return params, {"batch_stats": stats, "margins": {f"connector{i}": m for i, m in enumerate(margins)}}

  def term(params, state, student_feats, teacher_feats):
    g_s, g_t = taps(student_feats, teacher_feats)
    g_s, g_t = _aligned(g_s, g_t)
    margins = [state["margins"][f"connector{i}"] for i in range(len(g_s))]
    value, stats = ofd_loss(params, state["batch_stats"], g_s, g_t, margins, kernel)
    return value, dict(state, batch_stats=stats)

  method = _common.ce_plus_feature_method("ofd", float(c.ce_weight), float(c.feat_weight), term, init)
  return dataclasses.replace(method, needs_teacher_variables=True, teacher_bn_mode=str(c.teacher_bn_mode))
