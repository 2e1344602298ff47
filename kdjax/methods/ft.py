"""FT: Factor Transfer, "Paraphrasing Complex Network" (Kim et al., NeurIPS 2018).

RepDistiller `--distill factor` (`models/util.py` Paraphraser/Translator, `distiller_zoo/FT.py`).
Both modules read the last stage's post-ReLU output (`feats[-1]`, RepDistiller `feat[-2]`):

* paraphraser P on the teacher map (C_T channels, k = 0.5): encoder of three 3x3 convs
  C_T -> C_T -> C_T/2 -> C_T/2, decoder of three 3x3 stride-1 transposed convs
  C_T/2 -> C_T/2 -> C_T -> C_T, each followed by LeakyReLU(0.1), all with biases, no BN;
* translator Q on the student map: three 3x3 convs C_S -> C_S -> C_T/2 -> C_T/2, each followed
  by BN (train mode, statistics in the method state) and LeakyReLU(0.1).

Pre-stage (`init_epochs` = 30 epochs before the main training; RepDistiller `init()`): only P
moves, to reconstruct the teacher map, L_init = mean (dec(enc(f^T)) - f^T)^2, with PyTorch SGD
at a constant LR (`init_lr`: 0.01 for ResNet/WRN students, the student's LR otherwise), momentum
0.9, weight decay 5e-4.

Main training: P is frozen (not in the main mask; its factor under stop_gradient) and

    factor(x) = l2_normalize(mean_c x^2, flattened per sample)      (an attention map)
    L = w_ce * CE + w_ft * mean_{b,p} |factor(Q(f^S)) - factor(enc(f^T))|

with the larger map average-pooled to the smaller one's size first. CIFAR-100 weights
(RepDistiller `-a 0 -b 200`): CE 1, FT 200. Q is trained with the student (and decayed).
P and Q are method params: never exported with the student.

Convention: RepDistiller runs the student in eval mode during the paraphraser's pre-stage (its
output is unused there); kdjax's generic pre-stage runs the student forward as in training, so
the student's BN running statistics move during those epochs (its parameters do not). They are
running averages with momentum 0.1 and are refreshed within the first main epoch.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kdjax import ops
from kdjax.methods import _common, base, registry
from kdjax.models import layers

_SLOPE = 0.1  # LeakyReLU(0.1) everywhere in both modules


def _conv3x3(features: int, in_features: int, name: str) -> nn.Conv:
  """`nn.Conv2d(in, out, 3, 1, 1)` with PyTorch's default init (weight and bias)."""
  return layers.conv(features, 3, padding=1, use_bias=True, in_features=in_features, name=name)


def _conv_transpose3x3(features: int, name: str) -> nn.ConvTranspose:
  """`nn.ConvTranspose2d(in, out, 3, 1, 1)`: a stride-1 conv padded by k - 1 - p = 1.

  Kernel (3, 3, out, in) like PyTorch's (in, out, 3, 3) up to the axis order; PyTorch's fan-in for
  a transposed conv is out * 9, and variance_scaling's fan-in axis -2 is `out` here too.
  """
  return nn.ConvTranspose(features, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                          transpose_kernel=True, kernel_init=layers.torch_default_kernel_init,
                          bias_init=layers.torch_default_bias_init(features * 9), name=name)


def factor_channels(t_channels: int, rate: float) -> int:
  """RepDistiller's `int(C_T * k)`: the factor's channel count."""
  return int(t_channels * rate)


class Paraphraser(nn.Module):
  """Encoder-decoder on the teacher map (NHWC); returns `(factor, reconstruction)`."""
  channels: int
  rate: float = 0.5

  @nn.compact
  def __call__(self, x: jax.Array, decode: bool = True) -> tuple[jax.Array, Any]:
    c, f = self.channels, factor_channels(self.channels, self.rate)
    for i, (c_in, c_out) in enumerate(((c, c), (c, f), (f, f))):
      x = nn.leaky_relu(_conv3x3(c_out, c_in, f"encoder{i}")(x), _SLOPE)
    factor = x
    if not decode:
      return factor, None
    for i, c_out in enumerate((f, c, c)):
      x = nn.leaky_relu(_conv_transpose3x3(c_out, f"decoder{i}")(x), _SLOPE)
    return factor, x


class Translator(nn.Module):
  """Three 3x3 conv-BN-LeakyReLU layers on the student map (NHWC) down to the factor's channels."""
  s_channels: int
  t_channels: int
  rate: float = 0.5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    c, f = self.s_channels, factor_channels(self.t_channels, self.rate)
    for i, (c_in, c_out) in enumerate(((c, c), (c, f), (f, f))):
      x = _conv3x3(c_out, c_in, f"conv{i}")(x)
      x = nn.leaky_relu(layers.batch_norm(train, name=f"bn{i}")(x), _SLOPE)
    return x


def _last_maps(student_feats: dict[str, Any], teacher_feats: dict[str, Any]) -> list[jax.Array]:
  """Float32 last-stage (post-ReLU) maps of student and teacher."""
  return _common.f32([student_feats["feats"][-1], teacher_feats["feats"][-1]])


def factor(x: jax.Array, p: int = 2) -> jax.Array:
  """RepDistiller's `factor`: the L2-normalised channel mean of x^p, flattened per sample."""
  # An integer power (lax.integer_pow): the translator's LeakyReLU outputs can be negative.
  return ops.l2_normalize(jnp.mean(x ** p, axis=-1).reshape(x.shape[0], -1), axis=1)


def factor_transfer_loss(factor_s: jax.Array, factor_t: jax.Array) -> jax.Array:
  """mean |factor(s) - factor(t)|, the larger map pooled to the smaller first (p1 = 2, p2 = 1)."""
  factor_s, factor_t = _common.match_spatial(factor_s, factor_t)
  return jnp.mean(jnp.abs(factor(factor_s) - factor(factor_t)))


def reconstruction_loss(params: dict[str, Any], f_t: jax.Array, rate: float) -> jax.Array:
  """The paraphraser's pre-stage loss: mean squared error of its reconstruction of f_t."""
  _, rec = Paraphraser(f_t.shape[-1], rate).apply({"params": params}, f_t)
  return jnp.mean(jnp.square(rec - f_t))


def ft_term(params: dict[str, Any], batch_stats: Any, f_s: jax.Array, f_t: jax.Array,
            rate: float) -> tuple[jax.Array, Any]:
  """(factor-transfer term, the translator's new BN statistics); the paraphraser is a constant."""
  factor_t, _ = Paraphraser(f_t.shape[-1], rate).apply({"params": params["paraphraser"]}, f_t,
                                                       decode=False)
  factor_t = jax.lax.stop_gradient(factor_t)
  factor_s, mutated = Translator(f_s.shape[-1], f_t.shape[-1], rate).apply(
      {"params": params["translator"], "batch_stats": batch_stats}, f_s, train=True,
      mutable=["batch_stats"])
  return factor_transfer_loss(factor_s, factor_t), mutated["batch_stats"]


def _trains_paraphraser(path: base.ParamPath) -> bool:
  """Pre-stage mask: the paraphraser alone."""
  return path[:2] == ("method", "paraphraser")


def _trains_all_but_paraphraser(path: base.ParamPath) -> bool:
  """Main mask: the student and the translator; the pre-trained paraphraser stays frozen."""
  return not _trains_paraphraser(path)


@registry.register("ft", defaults=dict(ce_weight=1.0, feat_weight=200.0, rate=0.5, init_epochs=30,
                                       init_lr=0.0))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """FT with `cfg.ft.{ce_weight, feat_weight, rate, init_epochs, init_lr}` (0 LR: `optim.lr`)."""
  c = cfg.ft
  rate = float(c.rate)

  def init(rng, student_out, teacher_out, data_info):
    del data_info
    t_out = _common.single_teacher(teacher_out, "ft")
    f_s, f_t = _last_maps(student_out[1], t_out[1])
    p_key, t_key = jax.random.split(rng)
    paraphraser = Paraphraser(f_t.shape[-1], rate).init(p_key, jnp.zeros_like(f_t))
    translator = Translator(f_s.shape[-1], f_t.shape[-1], rate).init(t_key, jnp.zeros_like(f_s),
                                                                     train=False)
    params = {"paraphraser": paraphraser["params"], "translator": translator["params"]}
    return params, {"batch_stats": translator["batch_stats"]}

  def term(params, state, student_feats, teacher_feats):
    f_s, f_t = _last_maps(student_feats, teacher_feats)
    value, batch_stats = ft_term(params, state["batch_stats"], f_s, f_t, rate)
    return value, {"batch_stats": batch_stats}

  def init_loss(params, state, student_out, teacher_out, batch, progress):
    del student_out, batch, progress
    t_out = _common.single_teacher(teacher_out, "ft")
    f_t = base.at_least_f32(jax.lax.stop_gradient(t_out[1]["feats"][-1]))
    value = reconstruction_loss(params["paraphraser"], f_t, rate)
    return value, {"loss_paraphraser": value}, state

  main = _common.ce_plus_feature_method("ft", float(c.ce_weight), float(c.feat_weight), term, init)
  prestage = _common.init_prestage(cfg, c, init_loss, _trains_paraphraser)
  return base.Method(name="ft", needs_teacher=True, loss=main.loss, init=init,
                     trains=_trains_all_but_paraphraser, prestage=prestage)
