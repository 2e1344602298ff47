"""SFTN phase 1: Learning Student-Friendly Teacher Networks (Park, Cha, Jeong, Kim, Han; NeurIPS 2021).

The run's model is the *teacher* being trained from scratch. After each teacher
stage i = 1..N-1 a student branch R_i is attached: a teacher-to-student feature
transform T_i followed by the remaining student stages i+1..N and the student's
classifier, giving logits z_R^i. Teacher, transforms and branches train jointly:

    L = l_T * CE(z_T, y) + l_CE * red_i CE(z_R^i, y)
        + l_KL * tau^2 * red_i mean_b KL(. || .)(softmax(z_R^i / tau), softmax(z_T / tau))

with `red_i` = sum (default) or mean over the branches. Nothing is detached: the KL
gradient reaches the branch *and* the teacher (its logits directly, its stage
features through T_i and the branch), which is what makes the teacher
student-friendly. Phase 2 is any kdjax method distilling a fresh student from the
exported teacher (`configs/sftn_cifar.py` chains both phases through
`config.teacher.recipe = 'sftn'`); the branches are method parameters, so the
exported `model/` is the plain teacher network.

Config `config.sftn`: `student` (the architecture whose stages form the
branches; required), `teacher_ce_weight` (l_T), `branch_ce_weight` (l_CE),
`branch_kl_weight` (l_KL), `temperature` (tau), `kl_direction`,
`branch_reduction`, `transform_kernel`, `transform_relu`, `transform_downsample`.

Branches. Each branch holds its own copy of the student stages it runs (stages
i+1..N plus the head), created by initialising the student's `from_stage` (so the
parameter names are the student's PyTorch names: `branch1/student/layer2/...`), and
its transform `branch<i>/transform/{0,1}` (conv, BN). Stage i's output of the
teacher is `feats[i]` (the same tap the feature methods read); the transform maps
it to the student's `feats[i]` shape (channels and spatial size), derived from
the shapes, never tabulated per architecture. Teacher and student must have the
same number of stages (resnet/wrn/ShuffleNet 3; vgg, MobileNetV2, ResNet50 4);
otherwise `init` raises a UserError naming both. All branch BatchNorms run in
train mode inside the loss (batch statistics); their running statistics live in
the method state as `{'batch_stats': ...}` (as ReviewKD keeps its ABFs') and are
never read, since the branches are discarded after phase 1. The branches run in
the run's compute dtype (`config.dtype`); the loss is float32.

Choices where the record is open (docs/methods.md §4, marked ⚠ there), each a field:

* `transform_kernel=1`, `transform_relu=True`: T_i = conv k x k (no bias) + BN +
  ReLU, kaiming-normal(fan_out) conv init as the CIFAR zoo. The secondary notes
  describe a 1x1 conv + BN + ReLU; the ReLU makes the branch input non-negative
  like the post-ReLU stage outputs the student's stages normally receive.
* `transform_downsample='avg_pool'`: where the teacher's map is larger than the
  student's at the same stage (resnet32x4 32x32 vs ShuffleV2 16x16), it is
  average-pooled to the student's size (PyTorch `adaptive_avg_pool2d` bins) before
  the conv, so every teacher position gets a gradient; 'stride' instead gives the
  conv the integer stride (a ResNet-shortcut style 1x1/stride-2, which reads one
  pixel in four). A smaller teacher map is nearest-upsampled. The paper states no
  rule for mismatched sizes.
* `kl_direction='kd'`: the paper writes the term KL(q_R^i || q_T); the branch is
  the student's stand-in, imitating the teacher as the student will in phase 2,
  and the KD literature writes that student-imitates-teacher term in this order
  while computing KL(p_T || p_R) (Hinton's loss as RepDistiller's `DistillKL`,
  whose code base SFTN's phase 2 uses). 'kd' computes sum_c p_T (log p_T - log p_R);
  'reverse' computes the literal sum_c p_R (log p_R - log p_T). Both sides carry
  gradient in either case.
* `branch_reduction='sum'`: the paper's loss sums over the branches (sum_i, as
  written for both branch terms); 'mean' divides both by N-1.
* Defaults l_T = 1, l_CE = 1, l_KL = 3, tau = 1: the paper's CIFAR-100 setting
  (docs/sources.md [S1] quotes it; its ImageNet setting is l_KL = 1). The tau^2 factor
  (KD's gradient-scale convention) is a no-op at tau = 1.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kdjax import models, ops
from kdjax.errors import UserError
from kdjax.methods import base, registry
from kdjax.models import layers

Size = tuple[int, int]
KL_DIRECTIONS = ("kd", "reverse")
REDUCTIONS = ("sum", "mean")
DOWNSAMPLES = ("avg_pool", "stride")


# ----------------------------------------------------------------------------- the loss


def branch_kl(branch_logits: jax.Array, teacher_logits: jax.Array, temperature: float,
              direction: str = "kd") -> jax.Array:
  """tau^2 * batch-mean KL between softened branch and teacher outputs; gradient to both sides."""
  log_pr = jax.nn.log_softmax(base.at_least_f32(branch_logits) / temperature, axis=-1)
  log_pt = jax.nn.log_softmax(base.at_least_f32(teacher_logits) / temperature, axis=-1)
  if direction == "kd":  # KL(p_T || p_R)
    kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_pr), axis=-1)
  elif direction == "reverse":  # KL(p_R || p_T)
    kl = jnp.sum(jnp.exp(log_pr) * (log_pr - log_pt), axis=-1)
  else:
    raise UserError(f"config.sftn.kl_direction={direction!r}; valid: {', '.join(KL_DIRECTIONS)}.")
  return temperature**2 * jnp.mean(kl)


def sftn_loss(teacher_logits: jax.Array, branch_logits: Sequence[jax.Array], labels: jax.Array, *,
              teacher_ce_weight: float = 1.0, branch_ce_weight: float = 1.0,
              branch_kl_weight: float = 3.0, temperature: float = 1.0, kl_direction: str = "kd",
              branch_reduction: str = "sum") -> tuple[jax.Array, dict[str, jax.Array]]:
  """(L_SFTN, metrics) from the teacher's and the branches' logits; no stop_gradient anywhere."""
  if branch_reduction not in REDUCTIONS:
    raise UserError(f"config.sftn.branch_reduction={branch_reduction!r}; valid: {', '.join(REDUCTIONS)}.")
  scale = 1.0 / len(branch_logits) if branch_reduction == "mean" and branch_logits else 1.0
  ce_t = base.cross_entropy(teacher_logits, labels)
  ces = [base.cross_entropy(z, labels) for z in branch_logits]
  kls = [branch_kl(z, teacher_logits, temperature, kl_direction) for z in branch_logits]
  ce_r = scale * sum(ces, jnp.zeros((), jnp.float32))
  kl_r = scale * sum(kls, jnp.zeros((), jnp.float32))
  total = teacher_ce_weight * ce_t + branch_ce_weight * ce_r + branch_kl_weight * kl_r
  metrics = {"loss_ce": ce_t, "loss_branch_ce": ce_r, "loss_branch_kl": kl_r}
  for i, (ce, kl) in enumerate(zip(ces, kls), start=1):  # branch i sits after stage i
    metrics[f"branch{i}_ce"], metrics[f"branch{i}_kl"] = ce, kl
  return total, metrics


# ----------------------------------------------------------------------------- geometry


@dataclasses.dataclass(frozen=True)
class BranchPlan:
  """Where the branches attach and what each transform must produce (all static)."""
  student: str
  num_classes: int
  stages: tuple[int, ...]              # attach points i (after teacher stage i)
  out_channels: tuple[int, ...]        # the student's feats[i] channels
  out_sizes: tuple[Size, ...]          # the student's feats[i] spatial size


def _stage_shapes(arch: str, image_size: Size, num_classes: int) -> tuple[tuple[int, ...], ...]:
  """(H, W, C) of `arch`'s feats f0..fN on an `image_size` input, from shapes only."""
  model = models.get(arch, num_classes=num_classes)
  x = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
  out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False)[0], x)
  return tuple(tuple(int(d) for d in f.shape[1:]) for f in out[1]["feats"])


def _input_size(teacher: str, teacher_f0: Size, num_classes: int) -> Size:
  """The image size that gives the teacher's stem map `teacher_f0` (stems keep or halve it)."""
  ref = _stage_shapes(teacher, (32, 32), num_classes)[0]
  return (teacher_f0[0] * 32 // ref[0], teacher_f0[1] * 32 // ref[1])


def make_plan(teacher: str, student: str, teacher_feats: Sequence[Any], num_classes: int) -> BranchPlan:
  """The branch plan for a teacher whose `feats` are `teacher_feats` (NHWC arrays or shapes)."""
  if student not in models.names():
    raise UserError(f"config.sftn.student={student!r} is not a model; valid models: "
                    f"{', '.join(models.names())}")
  image = _input_size(teacher, tuple(int(d) for d in teacher_feats[0].shape[1:3]), num_classes)
  s_shapes = _stage_shapes(student, image, num_classes)
  n_t, n_s = len(teacher_feats) - 1, len(s_shapes) - 1
  if n_t != n_s:
    raise UserError(
        f"SFTN attaches a {student} branch after each {teacher} stage, so both need the same "
        f"number of stages; the teacher has {n_t} (feats {[tuple(f.shape[1:]) for f in teacher_feats]}) "
        f"and the student {n_s} (feats {list(s_shapes)}). Pick a student of the same stage count.")
  if n_t < 2:
    raise UserError(f"SFTN needs at least 2 stages to attach a branch; {teacher} has {n_t}.")
  stages = tuple(range(1, n_t))
  return BranchPlan(student=student, num_classes=num_classes, stages=stages,
                    out_channels=tuple(s_shapes[i][2] for i in stages),
                    out_sizes=tuple((s_shapes[i][0], s_shapes[i][1]) for i in stages))


def resample(x: jax.Array, size: Size, downsample: str) -> tuple[jax.Array, int]:
  """(map brought towards `size`, stride left for the conv): pool or stride down, nearest up."""
  h, w = x.shape[1:3]
  if (h, w) == tuple(size):
    return x, 1
  if h > size[0] or w > size[1]:
    if downsample == "stride":
      if h % size[0] or w % size[1] or h // size[0] != w // size[1]:
        raise UserError(f"config.sftn.transform_downsample='stride' needs an integer ratio between "
                        f"the teacher's {h}x{w} map and the student's {size[0]}x{size[1]}; use "
                        "'avg_pool'.")
      return x, h // size[0]
    if downsample != "avg_pool":
      raise UserError(f"config.sftn.transform_downsample={downsample!r}; valid: {', '.join(DOWNSAMPLES)}.")
    return ops.adaptive_avg_pool(x, size), 1
  return ops.nearest_resize(x, size), 1


# ----------------------------------------------------------------------------- modules


class Transform(nn.Module):
  """T_i: resample, conv k x k (no bias) + BN, optional ReLU."""
  out_channels: int
  out_size: Size
  kernel: int = 1
  relu: bool = True
  downsample: str = "avg_pool"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x, stride = resample(x, self.out_size, self.downsample)
    # Children '0' and '1' as PyTorch's Sequential(Conv2d, BatchNorm2d) would name them.
    x = layers.conv(self.out_channels, self.kernel, stride=stride, kernel_init=layers.kaiming_normal_fan_out,
                    name="0", dtype=self.dtype)(x)
    x = layers.batch_norm(train, name="1", dtype=self.dtype)(x)
    return nn.relu(x) if self.relu else x


class Branch(nn.Module):
  """R_i: the transform, then the student from stage i on; returns the branch's logits."""
  plan: BranchPlan
  index: int
  kernel: int = 1
  relu: bool = True
  downsample: str = "avg_pool"
  dtype: Any = None

  @nn.compact
  def __call__(self, h: jax.Array, train: bool = False) -> jax.Array:
    p, i = self.plan, self.index
    x = Transform(p.out_channels[i], p.out_sizes[i], self.kernel, self.relu, self.downsample,
                  dtype=self.dtype, name="transform")(h, train)
    # `models.get`'s own first argument is `name`, so the submodule is named through clone.
    student = models.get(p.student, num_classes=p.num_classes, dtype=self.dtype).clone(
        parent=self, name="student")
    return student.from_stage(x, p.stages[i], train)[0]


class Branches(nn.Module):
  """Every branch, `branch<i>` attached after teacher stage i; returns their logits in stage order."""
  plan: BranchPlan
  kernel: int = 1
  relu: bool = True
  downsample: str = "avg_pool"
  dtype: Any = None

  @nn.compact
  def __call__(self, teacher_feats: Sequence[jax.Array], train: bool = False) -> tuple[jax.Array, ...]:
    return tuple(
        Branch(self.plan, k, self.kernel, self.relu, self.downsample, dtype=self.dtype,
               name=f"branch{stage}")(teacher_feats[stage], train)
        for k, stage in enumerate(self.plan.stages))


# ----------------------------------------------------------------------------- the method


# The paper's CIFAR-100 setting (docs/sources.md [S1]): l_T = 1, l_R^CE = 1, l_R^KL = 3, tau = 1.
@registry.register("sftn", defaults=dict(
    student="", teacher_ce_weight=1.0, branch_ce_weight=1.0, branch_kl_weight=3.0, temperature=1.0,
    kl_direction="kd", branch_reduction="sum", transform_kernel=1, transform_relu=True,
    transform_downsample="avg_pool"))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """SFTN phase 1 (student-aware teacher training) with `cfg.sftn.*`; the run's model is the teacher."""
  c = cfg.sftn
  student, teacher = str(c.student), str(cfg.model)
  if not student:
    raise UserError("method 'sftn' trains a teacher with student branches: set config.sftn.student "
                    "to the student's architecture (configs/sftn_cifar.py does).")
  if c.kl_direction not in KL_DIRECTIONS:
    raise UserError(f"config.sftn.kl_direction={c.kl_direction!r}; valid: {', '.join(KL_DIRECTIONS)}.")
  if c.branch_reduction not in REDUCTIONS:
    raise UserError(f"config.sftn.branch_reduction={c.branch_reduction!r}; valid: {', '.join(REDUCTIONS)}.")
  if c.transform_downsample not in DOWNSAMPLES:
    raise UserError(f"config.sftn.transform_downsample={c.transform_downsample!r}; valid: "
                    f"{', '.join(DOWNSAMPLES)}.")
  if int(c.transform_kernel) < 1 or int(c.transform_kernel) % 2 == 0:
    raise UserError(f"config.sftn.transform_kernel={c.transform_kernel} must be odd and positive.")
  weights = dict(teacher_ce_weight=float(c.teacher_ce_weight), branch_ce_weight=float(c.branch_ce_weight),
                 branch_kl_weight=float(c.branch_kl_weight), temperature=float(c.temperature),
                 kl_direction=str(c.kl_direction), branch_reduction=str(c.branch_reduction))
  dtype = models.compute_dtype(str(cfg.dtype))

  def head_for(model_out: base.ModelOutput) -> Branches:
    # Rebuilt from the (static) shapes on every trace: init and loss always agree.
    logits, feats = model_out
    plan = make_plan(teacher, student, feats["feats"], int(logits.shape[-1]))
    return Branches(plan, int(c.transform_kernel), bool(c.transform_relu), str(c.transform_downsample),
                    dtype=dtype)

  def init(rng, student_out, teacher_out, data_info):
    del teacher_out, data_info
    variables = head_for(student_out).init(rng, student_out[1]["feats"], train=False)
    return variables["params"], {"batch_stats": variables["batch_stats"]}

  def loss(params, state, student_out, teacher_out, batch, progress):
    del teacher_out, progress  # `student_out` is the teacher being trained
    branch_logits, mutated = head_for(student_out).apply(
        {"params": params, "batch_stats": state["batch_stats"]}, student_out[1]["feats"], train=True,
        mutable=["batch_stats"])
    total, metrics = sftn_loss(student_out[0], branch_logits, batch["label"], **weights)
    return total, metrics, dict(state, batch_stats=mutated["batch_stats"])

  return base.Method(name="sftn", needs_teacher=False, loss=loss, init=init)
