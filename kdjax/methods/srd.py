"""SRD / SRRL: Yang, Martinez, Bulat & Tzimiropoulos (ICLR 2021), "Knowledge Distillation via
Softmax Regression Representation Learning".

The student's penultimate representation (the pooled vector `pooled`, (B, C_s)) goes through
a connector, a 1x1 convolution (no bias) + BatchNorm + ReLU on it viewed as a 1x1 map (train
mode; running statistics in the method state), to the teacher's width C_t. Two terms then
match the teacher: the representation itself, and what the teacher's own (frozen) classifier
W_t, b_t predicts from it ("softmax regression"):

    h = ReLU(BN(conv1x1(pooled_s)))
    L = w_ce * CE(z_s, y) + w_kd * KD_T(z_s, z_t)
        + w_srd * [ MSE(h, pooled_t) + MSE(h W_t + b_t, z_t) ]

(MSE the mean over elements; KD_T kdjax's T^2 batch-mean KL). The classifier is read from the
teacher once at init (`needs_teacher_variables`) and kept in the method state, so it is
never trained; the gradient of the second term reaches the connector and the student
through it. The student predicts with its own classifier. CIFAR-100 recipe and sources:
docs/methods.md §7.18 (w_ce = w_kd = 1 at T = 4, w_srd = 1).

Not torchdistill's `SRDLoss`, which is Miles & Mikolajczyk (AAAI 2024), another method
under the same abbreviation.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kdjax.methods import _common, base, registry
from kdjax.methods import kd as kd_lib
from kdjax.models import layers


class Connector(nn.Module):
  """1x1 conv (no bias) + BatchNorm + ReLU from the student's pooled width to the teacher's."""
  features: int

  @nn.compact
  def __call__(self, pooled: jax.Array, train: bool = True) -> jax.Array:
    x = pooled[:, None, None, :]  # (B, 1, 1, C): BatchNorm over the batch, as on a 1x1 map
    x = layers.conv(self.features, 1, padding=0, name="conv")(x)
    x = nn.relu(layers.batch_norm(train, name="bn")(x))
    return x[:, 0, 0, :]


def mse(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean squared error over every element (`F.mse_loss`)."""
  return jnp.mean(jnp.square(a - b))


@registry.register("srd", defaults=dict(ce_weight=1.0, kd_weight=1.0, srd_weight=1.0, temperature=4.0))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """SRD with `cfg.srd.{ce_weight, kd_weight, srd_weight, temperature}` (CIFAR: 1, 1, 1, 4)."""
  c = cfg.srd
  w_ce, w_kd, w_srd, t = float(c.ce_weight), float(c.kd_weight), float(c.srd_weight), float(c.temperature)

  def init(rng, student_out, teacher_out, data_info):
    t_out = _common.single_teacher(teacher_out, "srd")
    width = t_out[1]["pooled"].shape[-1]
    variables = Connector(width).init(rng, jnp.zeros_like(base.at_least_f32(student_out[1]["pooled"])),
                                      train=False)
    classifier = _common.teacher_classifier(data_info["teacher_variables"], width)
    return {"connector": variables["params"]}, {"batch_stats": variables["batch_stats"],
                                                "teacher_classifier": classifier}

  def loss(params, state, student_out, teacher_out, batch, progress):
    del progress
    t_out = _common.single_teacher(teacher_out, "srd")
    pooled_t, logits_t = jax.lax.stop_gradient((base.at_least_f32(t_out[1]["pooled"]),
                                                base.at_least_f32(t_out[0])))
    h, mutated = Connector(pooled_t.shape[-1]).apply(
        {"params": params["connector"], "batch_stats": state["batch_stats"]},
        base.at_least_f32(student_out[1]["pooled"]), train=True, mutable=["batch_stats"])
    w = state["teacher_classifier"]
    feat, regress = mse(h, pooled_t), mse(h @ w["kernel"] + w["bias"], logits_t)
    ce = base.cross_entropy(student_out[0], batch["label"])
    kd = kd_lib.kd_loss(student_out[0], logits_t, t) if w_kd else jnp.float32(0.0)
    metrics = {"loss_ce": ce, "loss_kd": kd, "loss_srd_feat": feat, "loss_srd_logit": regress}
    new_state = dict(state, batch_stats=mutated["batch_stats"])
    return w_ce * ce + w_kd * kd + w_srd * (feat + regress), metrics, new_state

  return base.Method(name="srd", needs_teacher=True, loss=loss, init=init, needs_teacher_variables=True)
