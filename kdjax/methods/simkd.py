"""SimKD: Chen, Mei, Zhang, Wang, Feng & Chen (CVPR 2022), "Knowledge Distillation with the Reused
Teacher Classifier".

The student's last stage output f_s and the teacher's f_t (post-ReLU `feats[-1]`) are
brought to one spatial size (the larger average-pooled to the smaller), f_s goes through a
projector P (1x1 conv to C_t/F, BN, ReLU; 3x3 conv, BN, ReLU; 1x1 conv to C_t, BN, ReLU;
F = `factor`, 2 in the release; BN in train mode, statistics in the method state), and

    L = w_feat * MSE(P(f_s), f_t) + w_ce * CE(z_s, y) + w_kd * KD_T(z_s, z_t)

with the release's CIFAR weights w_feat = 1, w_ce = w_kd = 0: only the features are matched.
At test time the student predicts through the teacher's classifier: avgpool(P(f_s)) W_t + b_t,
W_t and b_t read from the teacher at init (method state, never trained). That network is the
method's `deployed` model, `simkd(STUDENT,channels=C_t,hw=H,factor=F)` in the zoo
(kdjax/models/simkd.py): what the run evaluates, keeps as best and exports. docs/methods.md §7.19.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from kdjax.errors import UserError
from kdjax.methods import _common, base, registry
from kdjax.methods import kd as kd_lib
from kdjax.models import simkd as simkd_model


def _maps(student_out, teacher_out):
  t_out = _common.single_teacher(teacher_out, "simkd")
  return student_out[1]["feats"][-1], t_out[1]["feats"][-1], t_out[0]


def _hw(f_s, f_t) -> int:
  """The common spatial size: the smaller of the two maps' (SimKD compares heights)."""
  return min(f_s.shape[1], f_t.shape[1])


@registry.register("simkd", defaults=dict(factor=2, feat_weight=1.0, ce_weight=0.0, kd_weight=0.0,
                                          temperature=4.0))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """SimKD with `cfg.simkd.{factor, feat_weight, ce_weight, kd_weight, temperature}` (CIFAR: 2, 1, 0, 0)."""
  c = cfg.simkd
  factor, w_feat, w_ce, w_kd, t = int(c.factor), float(c.feat_weight), float(c.ce_weight), float(c.kd_weight), \
      float(c.temperature)
  if factor < 1:
    raise UserError(f"config.simkd.factor={factor}: the projector's bottleneck divides the teacher's "
                    "channels by it; it must be >= 1.")

  def projector(channels: int) -> simkd_model.Projector:
    return simkd_model.Projector(channels, factor)

  def init(rng, student_out, teacher_out, data_info):
    f_s, f_t, _ = _maps(student_out, teacher_out)
    channels = f_t.shape[-1]
    if channels % factor:
      raise UserError(f"config.simkd.factor={factor} does not divide the teacher's {channels} channels.")
    variables = projector(channels).init(rng, simkd_model.align(base.at_least_f32(f_s), _hw(f_s, f_t)),
                                         train=False)
    classifier = _common.teacher_classifier(data_info["teacher_variables"], channels)
    return {"transfer": variables["params"]}, {"batch_stats": variables["batch_stats"],
                                               "teacher_classifier": classifier}

  def loss(params, state, student_out, teacher_out, batch, progress):
    del progress
    f_s, f_t, logits_t = _maps(student_out, teacher_out)
    hw = _hw(f_s, f_t)
    target = jax.lax.stop_gradient(simkd_model.align(base.at_least_f32(f_t), hw))
    h, mutated = projector(f_t.shape[-1]).apply(
        {"params": params["transfer"], "batch_stats": state["batch_stats"]},
        simkd_model.align(base.at_least_f32(f_s), hw), train=True, mutable=["batch_stats"])
    feat = jnp.mean(jnp.square(h - target))
    w = state["teacher_classifier"]
    predicted = jnp.mean(h, axis=(1, 2)) @ w["kernel"] + w["bias"]
    labels = batch["label"]
    metrics = {"loss_simkd": feat, "top1_deployed": 100.0 * jnp.sum(
        (jnp.argmax(predicted, -1) == labels) & (labels >= 0)) / jnp.maximum(jnp.sum(labels >= 0), 1)}
    total = w_feat * feat
    if w_ce:
      metrics["loss_ce"] = base.cross_entropy(student_out[0], labels)
      total = total + w_ce * metrics["loss_ce"]
    if w_kd:
      metrics["loss_kd"] = kd_lib.kd_loss(student_out[0], jax.lax.stop_gradient(logits_t), t)
      total = total + w_kd * metrics["loss_kd"]
    return total, metrics, dict(state, batch_stats=mutated["batch_stats"])

  def arch(student_arch, student_out, teacher_out):
    f_s, f_t, _ = _maps(student_out, teacher_out)
    return simkd_model.name(student_arch, f_t.shape[-1], _hw(f_s, f_t), factor)

  def variables(student_variables, method_params, method_state):
    return {"params": {"student": student_variables["params"], "transfer": method_params["transfer"],
                       "cls_t": method_state["teacher_classifier"]},
            "batch_stats": {"student": student_variables["batch_stats"],
                            "transfer": method_state["batch_stats"]}}

  return base.Method(name="simkd", needs_teacher=True, loss=loss, init=init, needs_teacher_variables=True,
                     deployed=base.Deployed(arch=arch, variables=variables))
