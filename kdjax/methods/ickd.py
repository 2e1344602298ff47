"""ICKD: Liu, Huang, Lin, Xie, Wang, Chang & Liang (ICCV 2021), "Exploring Inter-Channel Correlation
for Diversity-preserved Knowledge Distillation" (ICKD-C, the CIFAR variant).

The student's last stage output (post-ReLU `feats[-1]`, RepDistiller's `feat[-2]`) goes
through a 1x1 convolution (no bias) and BatchNorm (train mode; running statistics in the
method state) to the teacher's channel count C. Per sample, the inter-channel Gram matrix
G = F Fᵀ over the spatial positions (C x C, so the maps' sizes need not match) has its
rows L2-normalised (`F.normalize(dim=2)`), and

    L = w_ce * CE + w_kd * KD_T(z_s, z_t) + w_ickd * sum_{b,i,j} (G^S - G^T)^2 / (C * B)

with the release's CIFAR normalisation C * B (torchdistill's ImageNet port divides by
C * B^2). KD_T is kdjax's KD term (T^2 batch-mean KL). docs/methods.md §7.17.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kdjax import ops
from kdjax.methods import _common, base, registry
from kdjax.methods import kd as kd_lib
from kdjax.models import layers


class Embed(nn.Module):
  """The student-side 1x1 conv (no bias) + BatchNorm to the teacher's channels (NHWC)."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    x = layers.conv(self.features, 1, padding=0, name="conv2d")(x)
    return layers.batch_norm(train, name="l2norm")(x)


def channel_correlation(f: jax.Array) -> jax.Array:
  """Row-L2-normalised inter-channel Gram matrices (B, C, C) of an NHWC map."""
  flat = f.reshape(f.shape[0], -1, f.shape[-1])
  return ops.l2_normalize(jnp.einsum("bpc,bpd->bcd", flat, flat), axis=2)


def ickd_loss(f_s: jax.Array, f_t: jax.Array) -> jax.Array:
  """sum (G^S - G^T)^2 / (C * B) for an embedded student map and the teacher's map."""
  diff = channel_correlation(f_s) - channel_correlation(f_t)
  return jnp.sum(jnp.square(diff)) / (f_s.shape[-1] * f_s.shape[0])


@registry.register("ickd", defaults=dict(ce_weight=1.0, kd_weight=1.0, ickd_weight=2.5, temperature=4.0))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """ICKD-C with `cfg.ickd.{ce_weight, kd_weight, ickd_weight, temperature}` (CIFAR: 1, 1, 2.5, 4)."""
  c = cfg.ickd
  w_ce, w_kd, w_ickd, t = float(c.ce_weight), float(c.kd_weight), float(c.ickd_weight), float(c.temperature)

  def maps(student_out, teacher_out):
    t_out = _common.single_teacher(teacher_out, "ickd")
    return (base.at_least_f32(student_out[1]["feats"][-1]),
            base.at_least_f32(jax.lax.stop_gradient(t_out[1]["feats"][-1])), t_out[0])

  def init(rng, student_out, teacher_out, data_info):
    del data_info
    f_s, f_t, _ = maps(student_out, teacher_out)
    variables = Embed(f_t.shape[-1]).init(rng, jnp.zeros_like(f_s), train=False)
    return {"embed_s": variables["params"]}, {"batch_stats": variables["batch_stats"]}

  def loss(params, state, student_out, teacher_out, batch, progress):
    del progress
    f_s, f_t, teacher_logits = maps(student_out, teacher_out)
    embedded, mutated = Embed(f_t.shape[-1]).apply(
        {"params": params["embed_s"], "batch_stats": state["batch_stats"]}, f_s, train=True,
        mutable=["batch_stats"])
    ce = base.cross_entropy(student_out[0], batch["label"])
    kd = kd_lib.kd_loss(student_out[0], teacher_logits, t) if w_kd else jnp.float32(0.0)
    ickd = ickd_loss(embedded, f_t)
    metrics = {"loss_ce": ce, "loss_kd": kd, "loss_ickd": ickd}
    return w_ce * ce + w_kd * kd + w_ickd * ickd, metrics, {"batch_stats": mutated["batch_stats"]}

  return base.Method(name="ickd", needs_teacher=True, loss=loss, init=init)
