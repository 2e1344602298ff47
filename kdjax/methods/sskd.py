"""SSKD: Xu, Liu, Li & Loy (ECCV 2020), "Knowledge Distillation Meets Self-Supervision", as its release
trains on CIFAR-100.

Each image is flipped once and seen in four rotations (0, 90, 180, 270 degrees), each rotation
cropped on its own (`view_flip='shared'`, `view_transforms` = rotations); both networks run on
the 4B images as one batch (`view_forward='concat'`). Both carry a projection head on the pooled
feature (Linear(d, d), ReLU, Linear(d, d), PyTorch's init; method parameters `t_head`, `s_head`).

1. Prestage (`t_epochs`, 60): the teacher's head alone learns the self-supervised task: for each
   of the 3B rotated images, the cosine similarities of its projection to the B unrotated
   projections are logits whose target is its own image (cross-entropy); SGD at `t_lr` (0.05),
   x0.1 at `t_milestones` (30, 45), the run's momentum and weight decay.
2. Main training, the student and its head (the teacher's head frozen), B unrotated, 3B rotated:

    L = w_ce * CE(z_s, y) + w_kd * KD_T(z_s, z_t)                           (unrotated)
      + w_tf * KD_{T_tf}(z_s^rot, z_t^rot) over the kept rotated images
      + w_ss * T_ss^2 * mean KL(softmax(S_t / T_ss) || softmax(S_s / T_ss)) over the kept rows

   with S the 3B x B cosine similarities of the projections. "Kept": the release's error-level
   ranking: a row is correct when the teacher ranks its target first (the true class for the
   KD term, its own image for the similarities); all correct rows are kept and the
   int(ratio x #wrong) wrong ones whose target the teacher ranks highest (ratio_tf 1.0,
   ratio_ss 0.75). Ties between equally ranked wrong rows are broken by the release's row order
   (its `torch.argsort` is not stable, so it leaves them to the implementation). The KLs are `batchmean` over
   the kept rows.

The release's rotations are of the flipped image before its random crop; kdjax crops, then
rotates: the same distribution of views (the 4-pixel zero padding is symmetric). The rotated
images are ordered rotation-major here (the release interleaves them per image); every term is
a sum or a mean over rows, so the order changes nothing. docs/methods.md §7.20.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kdjax import ops, torch_optim
from kdjax.methods import _common, base, registry
from kdjax.methods import kd as kd_lib
from kdjax.models import layers

ROTATIONS = 4


class ProjHead(nn.Module):
  """SSKD's `proj_head`: Linear(d, d), ReLU, Linear(d, d) (PyTorch's default init)."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(layers.dense(self.features, self.features, name="0")(x))
    return layers.dense(self.features, self.features, name="2")(x)


def rotate(k: int):
  """A view transform: rotate each (B, H, W, C) image by k x 90 degrees (`np.rot90(img, k)`)."""
  return lambda key, images: jnp.rot90(images, k, axes=(1, 2))


def cosine_similarities(rotated: jax.Array, normal: jax.Array, eps: float = 1e-8) -> jax.Array:
  """(3B, B) `F.cosine_similarity` of every rotated projection with every unrotated one."""
  dots = rotated @ normal.T
  norms = jnp.maximum(ops.norm(rotated, axis=1)[:, None] * ops.norm(normal, axis=1)[None, :], eps)
  return dots / norms


def target_rank(scores: jax.Array, targets: jax.Array) -> jax.Array:
  """Per row, how many entries score above its target's (0: the target ranks first)."""
  own = jnp.take_along_axis(scores, targets[:, None], axis=1)
  return jnp.sum(scores > own, axis=1)


def release_order(b: int) -> jax.Array:
  """Where each of the 3B rotated rows (rotation-major here) stands in the release's image-by-image
  order (image i's rotations 1, 2, 3 at 3i, 3i + 1, 3i + 2)."""
  rotation, image = jnp.divmod(jnp.arange((ROTATIONS - 1) * b), b)
  return image * (ROTATIONS - 1) + rotation


def kept_rows(rank: jax.Array, ratio: float, position: jax.Array) -> jax.Array:
  """The release's error-level ranking as a 0/1 mask: the correct rows (rank 0) and the first
  int(ratio x #wrong) wrong rows in order of rank, ties in the release's row `position` order."""
  wrong = jnp.sum(rank > 0)
  keep = jnp.sum(rank == 0) + jnp.floor(ratio * wrong).astype(jnp.int32)
  order = jnp.argsort(rank * rank.shape[0] + position)
  return jnp.zeros(rank.shape, jnp.float32).at[order].set((jnp.arange(rank.shape[0]) < keep).astype(jnp.float32))


def masked_kl(log_q: jax.Array, log_p: jax.Array, mask: jax.Array) -> jax.Array:
  """sum over kept rows of KL(p || q), divided by their number (`batchmean` over those rows)."""
  rows = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=1)
  return jnp.sum(mask * rows) / jnp.maximum(jnp.sum(mask), 1.0)


def ss_task_loss(reps: list[jax.Array]) -> jax.Array:
  """The teacher head's self-supervised loss: cross-entropy of each rotated image's similarities
  to the unrotated images, its own image the target."""
  normal, rotated = reps[0], jnp.concatenate(reps[1:])
  simi = cosine_similarities(rotated, normal)
  targets = jnp.tile(jnp.arange(normal.shape[0]), ROTATIONS - 1)
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(simi, axis=1), targets[:, None], axis=1))


def sskd_terms(c, s_logits: list, t_logits: list, s_reps: list, t_reps: list, labels: jax.Array) -> dict:
  """The four losses of the main training from per-rotation logits and projections."""
  b = s_logits[0].shape[0]
  ce = base.cross_entropy(s_logits[0], labels)
  kd = kd_lib.kd_loss(s_logits[0], t_logits[0], c.kd_temperature)
  s_rot, t_rot = (base.at_least_f32(jnp.concatenate(z[1:])) for z in (s_logits, t_logits))
  t_rot = jax.lax.stop_gradient(t_rot)
  rot_labels = jnp.tile(jnp.maximum(labels, 0), ROTATIONS - 1)
  tf_t = c.tf_temperature
  position = release_order(b)
  keep_tf = kept_rows(target_rank(t_rot, rot_labels), c.ratio_tf, position) * jnp.tile(labels >= 0, ROTATIONS - 1)
  tf = tf_t**2 * masked_kl(jax.nn.log_softmax(s_rot / tf_t, axis=1), jax.nn.log_softmax(t_rot / tf_t, axis=1),
                           keep_tf)
  s_simi = cosine_similarities(jnp.concatenate(s_reps[1:]), s_reps[0])
  t_simi = jax.lax.stop_gradient(cosine_similarities(jnp.concatenate(t_reps[1:]), t_reps[0]))
  keep_ss = kept_rows(target_rank(t_simi, jnp.tile(jnp.arange(b), ROTATIONS - 1)), c.ratio_ss, position)
  ss_t = c.ss_temperature
  ss = ss_t**2 * masked_kl(jax.nn.log_softmax(s_simi / ss_t, axis=1), jax.nn.log_softmax(t_simi / ss_t, axis=1),
                           keep_ss)
  return {"ce": ce, "kd": kd, "tf": tf, "ss": ss, "kept_tf": jnp.mean(keep_tf), "kept_ss": jnp.mean(keep_ss)}


@registry.register("sskd", defaults=dict(
    ce_weight=0.1, kd_weight=0.9, tf_weight=2.7, ss_weight=10.0, kd_temperature=4.0, tf_temperature=4.0,
    ss_temperature=0.5, ratio_tf=1.0, ratio_ss=0.75, t_epochs=60, t_lr=0.05, t_milestones=(30, 45)))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """SSKD with `cfg.sskd.*` (the release's `student.py` defaults)."""
  c = ml_collections.ConfigDict(cfg.sskd.to_dict())
  for key in ("kd_temperature", "tf_temperature", "ss_temperature", "ratio_tf", "ratio_ss"):
    c[key] = float(c[key])

  def pooled(outs: list) -> list[jax.Array]:
    return [base.at_least_f32(o[1]["pooled"]) for o in outs]

  def head(params, name, feats: list) -> list[jax.Array]:
    width = feats[0].shape[-1]
    return [ProjHead(width).apply({"params": params[name]}, f) for f in feats]

  def init(rng, student_out, teacher_out, data_info):
    del data_info
    t_out = _common.single_teacher(teacher_out, "sskd")
    k_t, k_s = jax.random.split(rng)
    t_dim, s_dim = t_out[1]["pooled"].shape[-1], student_out[1]["pooled"].shape[-1]
    return {"t_head": ProjHead(t_dim).init(k_t, jnp.zeros((1, t_dim)))["params"],
            "s_head": ProjHead(s_dim).init(k_s, jnp.zeros((1, s_dim)))["params"]}, {}

  def head_loss(params, state, student_out, teacher_out, batch, progress):
    del student_out, batch, progress
    t_feats = jax.lax.stop_gradient(pooled(teacher_out))  # the backbone stays as it is
    loss = ss_task_loss(head(params, "t_head", t_feats))
    return loss, {"loss_t_ss": loss}, state

  def loss(params, state, student_out, teacher_out, batch, progress):
    del progress
    t_reps = jax.lax.stop_gradient(head(params, "t_head", pooled(teacher_out)))
    terms = sskd_terms(c, [o[0] for o in student_out], [o[0] for o in teacher_out],
                       head(params, "s_head", pooled(student_out)), t_reps, batch["label"])
    total = c.ce_weight * terms["ce"] + c.kd_weight * terms["kd"] + c.tf_weight * terms["tf"] + \
        c.ss_weight * terms["ss"]
    metrics = {"loss_ce": terms["ce"], "loss_kd": terms["kd"], "loss_tf": terms["tf"], "loss_ss": terms["ss"],
               "sskd_kept_tf": terms["kept_tf"], "sskd_kept_ss": terms["kept_ss"]}
    return total, metrics, state

  def head_optimizer(steps_per_epoch: int):
    o = cfg.optim
    lr_fn = torch_optim.step_schedule(float(c.t_lr), tuple(c.t_milestones), float(o.lr_decay), steps_per_epoch)
    return torch_optim.sgd(lr_fn, float(o.momentum), float(o.weight_decay)), lr_fn

  prestage = None
  if int(c.t_epochs) > 0:
    prestage = base.Prestage(int(c.t_epochs), base.Update(
        head_loss, lambda path: path[:2] == ("method", "t_head"), head_optimizer))
  return base.Method(name="sskd", needs_teacher=True, loss=loss, init=init, prestage=prestage,
                     trains=lambda path: path[0] == "student" or path[:2] == ("method", "s_head"),
                     views=ROTATIONS, view_transforms=tuple(rotate(k) for k in range(ROTATIONS)),
                     view_forward="concat", view_flip="shared")
