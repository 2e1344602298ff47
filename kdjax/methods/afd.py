"""AFD: Feature-map-level Online Adversarial Knowledge Distillation (Chung et al., ICML 2020).

Online: K networks (a cohort, `config.model = 'A+B[+...]'`) trained together from
scratch. Two updates per iteration, as the paper optimises the two losses separately:

1. Logit loss, SGD (`config.optim`: lr 0.1, momentum 0.9, weight decay 1e-4, x0.1 at
   150/225 of 300 epochs), moving the networks only (`trains`):
       L_logit = sum_k [ CE(z_k, y) + T^2 * KL(softmax(z_j / T) || softmax(z_k / T)) ]
   over the peers j of k (`logit_peers`), peers constant: DML's form with a temperature
   (`kdjax.methods.dml.mutual_loss`).
2. Adversarial feature-map loss (least-squares GAN), Adam, in a second pass after a
   fresh forward at the updated parameters (`extra_updates`). Network k's last feature
   map, through its transfer layer, is F_k = T_k(G_k(x)); its discriminator D_k calls
   the predecessor's map real and its own fake (cyclic: k learns from k-1 mod K; for
   K = 2 each learns from the other):
       L_D_k = mean_b [1 - D_k(F_{k-1})]^2 + mean_b [D_k(F_k)]^2      (maps constant)
       L_G_k = mean_b [1 - D_k(F_k)]^2                                 (D_k constant)
   The pass minimises sum_k (L_G_k + L_D_k): the stop_gradients make the generator
   terms move only the networks (and transfer layers) and the discriminator terms
   only the discriminators, so one Adam step over both equals the separate G and D
   steps taken from the same forward pass (Adam is per-parameter).

Choices on what docs/methods.md §6 leaves open (⚠), each a field of `config.afd`:
* Adam schedule: lr 2e-5 x0.1 at epochs 75 and 150, (coupled, PyTorch-Adam) weight
  decay 1e-1, betas (0.9, 0.999), eps 1e-8 — the paper's experiment-setup text
  (docs/sources.md [S3]) gives lr, milestones and weight decay; betas/eps are PyTorch's
  defaults since the paper names none. It moves "discriminators and feature
  extractors": the networks' classifiers (`fc` / `classifier` / `linear`) are left
  out of this pass (`adv_trains_classifier`), so its weight decay does not reach them.
* Temperature T = 3: unknown in the record; AFD follows ONE's learning schedule for a
  fair comparison with ONE, and ONE distils at T = 3.
* Logit peers for K > 2: `cyclic` (the predecessor only), the same one-way cycle the
  paper introduces for the feature maps; `all` averages over every other network (DML).
* Feature map: the last stage output `feats[-1]` (the last convolutional map before
  pooling in the CIFAR ResNets; `feature='preact_feats'` takes its pre-ReLU version).
* Discriminator: conv 3x3 (C -> C, no bias) - BatchNorm - LeakyReLU(0.2) - conv over the
  whole remaining map (H x W -> 1 scalar, with bias) - sigmoid, the "small conv net
  ending in a sigmoid scalar" of docs/methods.md §6.1. Its BatchNorm normalises with the
  statistics of the batch it is given (real and fake maps are separate calls, as
  PyTorch's D(real), D(fake)) and keeps no running statistics: a discriminator is
  never evaluated.
* Transfer layer: only where channel counts differ, conv 1x1 - BatchNorm (batch
  statistics) - ReLU from a network's channels to the smallest channel count of the
  cohort (the larger network's map is brought down to the smaller's); trained with
  its network by the generator terms (it is part of F_k). Maps of different spatial
  size are adaptive-average-pooled to the smallest, as kdjax's feature baselines do.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from kdjax import ops, torch_optim
from kdjax.errors import UserError
from kdjax.methods import _common, base, dml, registry
from kdjax.models import layers


class BatchStatNorm(nn.Module):
  """BatchNorm that always normalises with the batch's own (biased) statistics; no running stats."""
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    var = jnp.mean(jnp.square(x - mean), axes)
    return (x - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias


class Discriminator(nn.Module):
  """(B, H, W, C) map -> (B,) score: conv3x3 - BN - LeakyReLU - conv(H x W) - sigmoid."""
  hidden: int
  slope: float = 0.2
  sigmoid: bool = True

  @nn.compact
  def __call__(self, f: jax.Array) -> jax.Array:
    x = layers.conv(self.hidden, 3, name="conv1")(f)
    x = nn.leaky_relu(BatchStatNorm(name="bn1")(x), self.slope)
    h, w = x.shape[1:3]
    x = nn.Conv(1, (h, w), padding="VALID", kernel_init=layers.torch_default_kernel_init,
                bias_init=layers.torch_default_bias_init(h * w * self.hidden), name="conv2")(x)
    x = x.reshape(x.shape[0])
    return jax.nn.sigmoid(x) if self.sigmoid else x


class Transfer(nn.Module):
  """Channel matching: conv1x1 (no bias) - BN (batch statistics) - ReLU."""
  channels: int

  @nn.compact
  def __call__(self, f: jax.Array) -> jax.Array:
    return nn.relu(BatchStatNorm(name="bn")(layers.conv(self.channels, 1, name="conv")(f)))


def lsgan_d(d_real: jax.Array, d_fake: jax.Array) -> jax.Array:
  """Least-squares discriminator loss: mean (1 - D(real))^2 + mean D(fake)^2."""
  return jnp.mean(jnp.square(1.0 - d_real)) + jnp.mean(jnp.square(d_fake))


def lsgan_g(d_fake: jax.Array) -> jax.Array:
  """Least-squares generator loss: mean (1 - D(fake))^2."""
  return jnp.mean(jnp.square(1.0 - d_fake))


def feature_maps(members: Sequence[base.ModelOutput], tap: str) -> list[jax.Array]:
  """Each member's last `tap` map in float32, pooled to the cohort's smallest spatial size."""
  maps = _common.f32([m[1][tap][-1] for m in members])
  h = min(f.shape[1] for f in maps)
  w = min(f.shape[2] for f in maps)
  return [f if f.shape[1:3] == (h, w) else ops.adaptive_avg_pool(f, (h, w)) for f in maps]


def target_channels(maps: Sequence[jax.Array]) -> int:
  """The channel count every map is brought to: the smallest of the cohort."""
  return min(f.shape[-1] for f in maps)


def transferred(params: dict[str, Any], maps: Sequence[jax.Array]) -> list[jax.Array]:
  """F_k: each map through its transfer layer where it has one (channel count above the target)."""
  c = target_channels(maps)
  return [Transfer(c).apply({"params": params[f"transfer{k}"]}, f) if f"transfer{k}" in params else f
          for k, f in enumerate(maps)]


def discriminate(disc_params: Any, f: jax.Array, hidden: int, sigmoid: bool, slope: float) -> jax.Array:
  """D(f) with the given discriminator parameters."""
  return Discriminator(hidden, slope, sigmoid).apply({"params": disc_params}, f)


def adversarial_loss(params: dict[str, Any], maps: Sequence[jax.Array], hidden: int = 0,
                     sigmoid: bool = True, slope: float = 0.2
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """sum_k L_G_k + L_D_k over the cyclic pairs (k-1 real, k fake); and the metrics."""
  feats = transferred(params, maps)
  hidden = hidden or target_channels(maps)
  num = len(feats)
  g_total, d_total, d_real_mean, d_fake_mean = 0.0, 0.0, 0.0, 0.0
  for k in range(num):
    disc = params[f"disc{k}"]
    real, fake = feats[(k - 1) % num], feats[k]
    # Generator term: D_k is a constant, the gradient reaches network k and its transfer layer.
    g_total = g_total + lsgan_g(discriminate(jax.lax.stop_gradient(disc), fake, hidden, sigmoid,
                                             slope))
    # Discriminator term: the maps are constants, the gradient reaches D_k only.
    d_real = discriminate(disc, jax.lax.stop_gradient(real), hidden, sigmoid, slope)
    d_fake = discriminate(disc, jax.lax.stop_gradient(fake), hidden, sigmoid, slope)
    d_total = d_total + lsgan_d(d_real, d_fake)
    d_real_mean, d_fake_mean = d_real_mean + jnp.mean(d_real), d_fake_mean + jnp.mean(d_fake)
  metrics = {"loss_adv_g": g_total, "loss_adv_d": d_total, "d_real": d_real_mean / num,
             "d_fake": d_fake_mean / num}
  return g_total + d_total, metrics


def init_params(rng: jax.Array, maps: Sequence[jax.Array], hidden: int = 0, sigmoid: bool = True,
                slope: float = 0.2) -> dict[str, Any]:
  """Transfer layers (where channels differ from the target) and one discriminator per network."""
  c = target_channels(maps)
  hidden = hidden or c
  params = {}
  for k, f in enumerate(maps):
    x = jnp.zeros((2, *f.shape[1:]), jnp.float32)
    if f.shape[-1] != c:
      params[f"transfer{k}"] = Transfer(c).init(jax.random.fold_in(rng, 2 * k), x)["params"]
      x = jnp.zeros((2, *f.shape[1:3], c), jnp.float32)
    params[f"disc{k}"] = Discriminator(hidden, slope, sigmoid).init(
        jax.random.fold_in(rng, 2 * k + 1), x)["params"]
  return params


adam_schedule = torch_optim.step_schedule  # the adversarial pass's MultiStepLR


def adam(c: dict[str, Any], steps_per_epoch: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """PyTorch Adam with `weight_decay` (coupled L2 added to the gradient) from `config.afd`'s fields,
  and its LR schedule."""
  schedule = torch_optim.step_schedule(float(c["adv_lr"]), c["adv_lr_milestones"], float(c["adv_lr_decay"]),
                                       steps_per_epoch)
  return torch_optim.adam(schedule, float(c["adv_b1"]), float(c["adv_b2"]), float(c["adv_eps"]),
                          float(c["adv_weight_decay"])), schedule


def networks_only(path: base.ParamPath) -> bool:
  """Mask of the logit pass: the networks (SGD with weight decay must not reach the discriminators)."""
  return path[0] == "student"


def adversarial_mask(with_classifier: bool):
  """Mask of the adversarial pass: discriminators, transfer layers and the feature extractors."""

  def trains(path: base.ParamPath) -> bool:
    if path[0] == "method":
      return True
    head = len(path) >= 3 and path[2] in ops.CLASSIFIER_NAMES
    return path[0] == "student" and (with_classifier or not head)

  return trains


@registry.register("afd", defaults=dict(
    temperature=3.0, kl_weight=1.0, logit_peers="cyclic", feature="feats",
    adv_lr=2e-5, adv_lr_milestones=(75, 150), adv_lr_decay=0.1, adv_weight_decay=0.1,
    adv_b1=0.9, adv_b2=0.999, adv_eps=1e-8, adv_trains_classifier=False,
    disc_hidden=0, disc_sigmoid=True, disc_slope=0.2))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """AFD with the fields of `cfg.afd` (see the module docstring for each ⚠ choice)."""
  c = cfg.afd
  t, w, rule, tap = float(c.temperature), float(c.kl_weight), str(c.logit_peers), str(c.feature)
  hidden, sigmoid, slope = int(c.disc_hidden), bool(c.disc_sigmoid), float(c.disc_slope)
  dml.peers(0, 2, rule)
  if tap not in ("feats", "preact_feats"):
    raise UserError(f"afd.feature must be 'feats' or 'preact_feats', got {tap!r}")

  def init(rng, student_out, teacher_out, data_info):
    del teacher_out, data_info
    maps = feature_maps(dml.member_outputs(student_out, "afd"), tap)
    return init_params(rng, maps, hidden, sigmoid, slope), {}

  def logit_loss(params, state, student_out, teacher_out, batch, progress):
    del params, teacher_out, progress
    logits = [o[0] for o in dml.member_outputs(student_out, "afd")]
    total, metrics = dml.mutual_loss(logits, batch["label"], t, w, rule)
    return total, metrics, state

  def adv_loss(params, state, student_out, teacher_out, batch, progress):
    del teacher_out, batch, progress
    maps = feature_maps(dml.member_outputs(student_out, "afd"), tap)
    total, metrics = adversarial_loss(params, maps, hidden, sigmoid, slope)
    return total, metrics, state

  fields = c.to_dict()  # a snapshot: the optimizer is built later, from these values
  adversarial = base.Update(loss=adv_loss, trains=adversarial_mask(bool(c.adv_trains_classifier)),
                            optimizer=lambda steps_per_epoch: adam(fields, steps_per_epoch))
  return base.Method(name="afd", needs_teacher=False, loss=logit_loss, init=init,
                     trains=networks_only, extra_updates=(adversarial,))
