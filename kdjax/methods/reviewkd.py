"""ReviewKD: Distilling Knowledge via Knowledge Review (Chen, Liu, Zhao, Jia; CVPR 2021, arXiv 2104.09044).

The student's stage features are fused deep-to-shallow by attention-based fusion
(ABF) modules, and each fused output is matched to the teacher feature at the same
level with the hierarchical context loss (HCL). Because the fused output at level j
mixes student levels j..n, a shallow teacher level supervises every deeper student
level (the "review"). With levels i = 1..n (n = the pooled vector as a 1x1 map):

    (Y_n, Z_n) = ABF_n(F_n^S)                       no fusion at the deepest level
    (Y_j, Z_j) = ABF_j(F_j^S, Z_{j+1}),  j = n-1 .. 1
    L = w_ce * CE + weight * min(epoch / warmup, 1) * sum_j HCL(Y_j, F_j^T)

ABF_j: x = BN(conv1x1(F_j^S)) to C_mid channels; if fusing, the residual Z_{j+1}
is nearest-resized to x's size, a = sigmoid(conv1x1_with_bias([x, Z])) gives two
per-pixel weights and x <- x * a_0 + Z * a_1; x is nearest-resized to the teacher
level's size if it differs (ShuffleNet/MobileNet students run at half the
teacher's resolution); Y_j = BN(conv3x3(x)) with the teacher's channel count and
Z_j = x (before the 3x3 conv). C_mid = min(`max_mid_channel`, channels of the
deepest student level). Both bias-free convs start from kaiming_uniform(a=1)
(variance_scaling(1, fan_in, uniform)); the fusion conv keeps PyTorch's default
init, as in the release.

Ablation switches (config fields; the defaults are the release, bit for bit). They
make the parts the paper leaves under-specified and that the ML Reproducibility
Challenge report on ReviewKD ablated (its res56->res20 component table: docs/methods.md
§3.6) explicit:

* `abf` (True): attention-based fusion. False removes only the attention: the
  residual is added unweighted (x <- x + Z, the paper's plain residual learning
  framework), and each level keeps its two connectors, 1x1 conv + BN to C_mid and
  3x3 conv + BN to the teacher's channels (the same modules, init and BNs as the
  ABF's conv1/conv2, so the ablation changes the fusion and nothing else). With
  `review=False` too this is a plain per-level connector.
* `feed` ('residual'): what a level passes to the next shallower one. 'residual'
  is the release: the fused C_mid map before the 3x3 conv (Z_j). 'output' passes
  the ABF output Y_j (the map matched to teacher level j) instead; where its
  channel count (the teacher's) differs from C_mid, a bias-free 1x1 conv
  (`res_proj`, kaiming_uniform a=1 like the others) brings it to C_mid first,
  since the fusion needs equal channels.
* `hcl_levels` ((0, 4, 2, 1)) and `hcl_weights` (()): the HCL pyramid. 0 is the
  full-resolution MSE (required), k > 0 an adaptive k x k average pool, used only
  on maps taller than k (the release's test). Empty weights = the release's rule
  (full 1, then each used pooled level half the previous one); otherwise one fixed
  weight per listed level. Each level's sum is divided by the sum of the weights
  it used. `hcl_levels=(0,)` turns HCL off: a single-level MSE per level.
* `review` (True): False drops the review, every level's fusion: student level j
  is transformed and matched to teacher level j only.

configs/reviewkd_cifar.py's ABLATIONS combines them into the report's rows (none,
+RLF, +ABF, +HCL without ABF, all) plus feed/HCL-shape variants. The report's "+RM"
row (the naive review: every student level against every shallower teacher level,
each with its own connector) is a different architecture, not a switch here.

Features, as in the official CIFAR-100 code (`CIFAR-100/model/reviewkd.py`,
`train.py`): student = post-ReLU stage outputs `feats[1:]` plus `pooled`; teacher =
pre-ReLU stage outputs `preact_feats[1:]` plus `pooled`; the stem f0 is unused.
Nothing is hard-coded per architecture: `init` derives every channel count and
size from the actual features (this reproduces the release's `build_review_kd`
tables for every CIFAR pair and also runs the VGG / MobileNetV2 pairs that the
release's CIFAR code cannot build). The ABFs live in the method's `params`
(optimised with the student, SGD + weight decay on all of them, as the release's
single optimizer does); their BatchNorm running statistics live in the method
`state` as `{'batch_stats': ...}`. The BNs always run in train mode inside the
loss (batch statistics, running statistics updated with PyTorch's momentum 0.1 and
unbiased variance) because the ABFs exist only during training; the running
statistics are never read and are kept for checkpoint fidelity only.

Choices where the paper and the release differ or are silent:

* HCL pyramid weights. The release halves the weight for each pooled level it
  actually uses (`cnt /= 2` only inside the taken branch), so the weights depend
  on the rank among the used levels, not on the pool size: an 8x8 or larger map
  gets 1 (full), 0.5 (4x4), 0.25 (2x2), 0.125 (1x1), normalised by 1.875; a 4x4 map
  gets 1, 0.5 (2x2), 0.25 (1x1) / 1.75; a 2x2 map 1, 0.5 (1x1) / 1.5; a 1x1 map only
  its MSE. kdjax follows the release. (A fixed 0.5/0.25/0.125 per pool size, as the
  level list in some write-ups reads, differs only for maps of 4x4 or smaller,
  i.e. VGG/ResNet50 teachers' deep levels, never for the official CIFAR pairs.)
  The "used" test compares the pool size with the map's height, as the release.
* Warmup epoch indexing. The release loops `for epoch in range(epochs)` and
  multiplies by min(1, epoch / 20): 0-indexed, so the feature loss is exactly 0 for
  the whole first epoch and reaches 1 at the 21st epoch. mdistiller's port counts
  epochs from 1 (first-epoch factor 0.05). Default `warmup_epoch_base=0` (the
  release); set 1 for mdistiller. During a zero-factor epoch the ABFs still run
  (their BN statistics move) and only weight decay changes their parameters, as in
  the release.
* Nearest interpolation follows PyTorch's legacy `mode='nearest'`
  (src = floor(dst * in / out)), also when downsampling; HCL's pooling follows
  `adaptive_avg_pool2d`'s bins (start = floor(i*H/l), end = ceil((i+1)*H/l)), so
  non-divisible maps such as ImageNet's 7x7 pool as in PyTorch.
* Precision. The ABFs and the loss run in float32 whatever the network's compute
  dtype (student features are upcast); they are a loss, not part of the student.
* Level counts. The release zips student and teacher lists and silently drops the
  extra entries (resnet20's five-entry shape list); here the student and teacher
  level counts must match, otherwise `init` raises a UserError naming both.
* The release's optional logit KL (`--use-kl`) is off by default and not
  implemented here (combine with `kd` if needed).
* Teacher BatchNorm. The release leaves the teacher in train mode (batch
  statistics); kdjax's train loop runs every teacher in eval mode, so teacher
  features here are the running-statistics ones (as in mdistiller's port). The
  release's optimiser recipe is in configs/reviewkd_cifar.py.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kdjax import ops
from kdjax.errors import UserError
from kdjax.methods import base, registry
from kdjax.models import layers

# kaiming_uniform_(a=1): gain sqrt(2 / (1 + a^2)) = 1, bound sqrt(3 / fan_in).
kaiming_uniform_a1 = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
# HCL's pyramid as released: the full-resolution MSE (0), then 4x4, 2x2, 1x1 average pools.
HCL_LEVELS = (0, 4, 2, 1)
FEEDS = ("residual", "output")

Size = tuple[int, int]


# ----------------------------------------------------------------------------- HCL


def hcl_weights(height: int, levels: Sequence[int] = HCL_LEVELS, weights: Sequence[float] = ()
                ) -> tuple[tuple[Optional[int], float], ...]:
  """((pool size or None for full resolution, weight), ...) of one HCL level, unnormalised.

  Empty `weights`: the release's rule (full 1, each used pooled level half the previous used one).
  """
  out: list[tuple[Optional[int], float]] = []
  w = 1.0
  for k, size in enumerate(levels):
    if size == 0:
      out.append((None, float(weights[k]) if weights else 1.0))
      continue
    if size >= height:
      continue
    if weights:
      out.append((size, float(weights[k])))
    else:
      w /= 2.0  # the release halves per used level, so the weight depends on its rank
      out.append((size, w))
  return tuple(out)


def _mse(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.mean(jnp.square(a - b))


def hcl_level(y: jax.Array, t: jax.Array, levels: Sequence[int] = HCL_LEVELS,
              weights: Sequence[float] = ()) -> jax.Array:
  """Hierarchical context loss of one NHWC level: weighted pyramid of MSEs over the sum of weights."""
  if y.shape != t.shape:
    raise ValueError(f"HCL needs equal shapes, got {y.shape} and {t.shape}")
  total, norm = jnp.zeros((), y.dtype), 0.0
  for size, w in hcl_weights(y.shape[1], levels, weights):
    if size is None:
      term = _mse(y, t)
    else:
      term = _mse(ops.adaptive_avg_pool(y, size), ops.adaptive_avg_pool(t, size))
    total, norm = total + w * term, norm + w
  return total / norm


def hcl_loss(outputs: Sequence[jax.Array], teacher: Sequence[jax.Array],
             levels: Sequence[int] = HCL_LEVELS, weights: Sequence[float] = ()) -> jax.Array:
  """Sum over levels (not the mean) of `hcl_level`, all in float32."""
  return sum(hcl_level(base.at_least_f32(y), base.at_least_f32(t), levels, weights)
             for y, t in zip(outputs, teacher))


def check_hcl(levels: Sequence[int], weights: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
  """Validated (levels, weights) of `config.reviewkd.hcl_levels/hcl_weights`, or a UserError."""
  levels, weights = tuple(int(v) for v in levels), tuple(float(w) for w in weights)
  if 0 not in levels or any(v < 0 for v in levels) or len(set(levels)) != len(levels):
    raise UserError(f"config.reviewkd.hcl_levels={levels}: distinct pool sizes >= 0 that include 0 "
                    "(the full-resolution MSE), e.g. (0, 4, 2, 1) (the release) or (0,) (HCL off).")
  if weights and (len(weights) != len(levels) or any(w <= 0 for w in weights)):
    raise UserError(f"config.reviewkd.hcl_weights={weights}: one positive weight per level of "
                    f"hcl_levels={levels}, or () for the release's halving rule.")
  return levels, weights


# ----------------------------------------------------------------------------- features and plan


def _pooled_map(pooled: jax.Array) -> jax.Array:
  """(B, C) pooled vector -> (B, 1, 1, C) map, the deepest review level."""
  return pooled[:, None, None, :]


def student_levels(student_out: base.ModelOutput) -> tuple[jax.Array, ...]:
  """Post-ReLU stage outputs `feats[1:]` plus the pooled vector as a 1x1 map, shallow -> deep."""
  feats = student_out[1]
  return tuple(feats["feats"][1:]) + (_pooled_map(feats["pooled"]),)


def teacher_levels(teacher_out: base.ModelOutput) -> tuple[jax.Array, ...]:
  """Pre-ReLU stage outputs `preact_feats[1:]` plus the pooled vector as a 1x1 map, shallow -> deep."""
  feats = teacher_out[1]
  return tuple(feats["preact_feats"][1:]) + (_pooled_map(feats["pooled"]),)


@dataclasses.dataclass(frozen=True)
class ReviewPlan:
  """Per-level geometry (shallow -> deep), the release's `build_review_kd` tables derived from shapes."""
  in_channels: tuple[int, ...]
  shapes: tuple[Size, ...]
  out_channels: tuple[int, ...]
  out_shapes: tuple[Size, ...]
  mid_channels: int


def make_plan(student: Sequence[Any], teacher: Sequence[Any], max_mid_channel: int) -> ReviewPlan:
  """The plan for student/teacher levels (anything with `.shape`, NHWC)."""
  if len(student) != len(teacher):
    raise UserError(
        f"ReviewKD pairs student and teacher levels by index, but the student has {len(student)} "
        f"(shapes {[tuple(s.shape[1:]) for s in student]}) and the teacher {len(teacher)} "
        f"(shapes {[tuple(t.shape[1:]) for t in teacher]}); pick a pair with the same number of "
        "stages.")
  if max_mid_channel < 1:
    raise UserError(f"config.reviewkd.max_mid_channel={max_mid_channel} must be positive.")
  return ReviewPlan(
      in_channels=tuple(int(s.shape[-1]) for s in student),
      shapes=tuple((int(s.shape[1]), int(s.shape[2])) for s in student),
      out_channels=tuple(int(t.shape[-1]) for t in teacher),
      out_shapes=tuple((int(t.shape[1]), int(t.shape[2])) for t in teacher),
      mid_channels=min(int(max_mid_channel), int(student[-1].shape[-1])))


# ----------------------------------------------------------------------------- modules


class ABF(nn.Module):
  """Attention-based fusion: returns (output for the teacher level, residual for the next shallower level).

  Parameter names mirror the release's `ABF` state_dict: `conv1.{0,1}`,
  `att_conv` (the release's `att_conv.0`), `conv2.{0,1}`. `attention=False` fuses by
  an unweighted sum (no `att_conv`); a residual of another channel count than C_mid
  (the `feed='output'` ablation) goes through `res_proj` first.
  """
  mid_channels: int
  out_channels: int
  fuse: bool
  attention: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, residual: Optional[jax.Array], out_shape: Size,
               train: bool) -> tuple[jax.Array, jax.Array]:
    x = layers.ConvBN(self.mid_channels, kernel=1, kernel_init=kaiming_uniform_a1, name="conv1")(x, train)
    if self.fuse:
      if residual.shape[-1] != self.mid_channels:
        residual = layers.conv(self.mid_channels, 1, use_bias=False, in_features=residual.shape[-1],
                               kernel_init=kaiming_uniform_a1, name="res_proj")(residual)
      residual = ops.nearest_resize(residual, x.shape[1:3])
      if self.attention:
        att = layers.conv(2, 1, use_bias=True, in_features=2 * self.mid_channels, name="att_conv")(
            jnp.concatenate([x, residual], axis=-1))
        att = jax.nn.sigmoid(att)
        # Two independent per-pixel gates (not a softmax), broadcast over channels.
        x = x * att[..., 0:1] + residual * att[..., 1:2]
      else:
        x = x + residual
    x = ops.nearest_resize(x, out_shape)
    y = layers.ConvBN(self.out_channels, kernel=3, padding=1, kernel_init=kaiming_uniform_a1,
                      name="conv2")(x, train)
    return y, x


class ReviewHead(nn.Module):
  """All ABFs and the deep-to-shallow review loop; `abfs_0` is the deepest, as the release's `abfs[0]`.

  `abf`, `feed` and `review` are the ablation switches of the module docstring (defaults: the release).
  """
  plan: ReviewPlan
  abf: bool = True
  feed: str = "residual"
  review: bool = True

  @nn.compact
  def __call__(self, levels: Sequence[jax.Array], train: bool) -> tuple[jax.Array, ...]:
    p = self.plan
    n = len(levels)
    outputs: list[jax.Array] = [None] * n  # type: ignore[list-item]
    residual = None
    for k, i in enumerate(reversed(range(n))):
      outputs[i], fused = ABF(p.mid_channels, p.out_channels[i], fuse=self.review and k > 0,
                              attention=self.abf, name=f"abfs_{k}")(
          levels[i], residual, p.out_shapes[i], train)
      residual = fused if self.feed == "residual" else outputs[i]
    return tuple(outputs)


# ----------------------------------------------------------------------------- the method


def _check_teacher(teacher_out: Any) -> None:
  """One teacher `(logits, features)` with `preact_feats` and `pooled`, or a UserError."""
  if teacher_out is None:
    raise UserError("reviewkd needs a teacher: set config.teacher.arch.")
  if isinstance(teacher_out, list):
    raise UserError("reviewkd distils from a single teacher, not an ensemble.")
  feats = teacher_out[1]
  if not isinstance(feats, dict) or "preact_feats" not in feats or "pooled" not in feats:
    raise UserError("reviewkd needs the teacher's `preact_feats` and `pooled` features.")


def review_loss(head: ReviewHead, params: base.PyTree, batch_stats: base.PyTree,
                student: Sequence[jax.Array], teacher: Sequence[jax.Array],
                hcl_levels: Sequence[int] = HCL_LEVELS, hcl_weights_: Sequence[float] = ()
                ) -> tuple[jax.Array, base.PyTree]:
  """(sum of HCL over levels, updated ABF batch_stats); ABF BNs in train mode."""
  student = [base.at_least_f32(s) for s in student]
  teacher = [jax.lax.stop_gradient(base.at_least_f32(t)) for t in teacher]
  outputs, mutated = head.apply({"params": params, "batch_stats": batch_stats}, student,
                                train=True, mutable=["batch_stats"])
  return hcl_loss(outputs, teacher, hcl_levels, hcl_weights_), mutated["batch_stats"]


# Official CIFAR-100 release (`CIFAR-100/train.py` defaults): --kd-loss-weight 1.0 (per-pair
# values in configs/reviewkd_cifar.py), --ce-loss-weight 1.0, --kd-warm-up 20 with a 0-indexed
# epoch; MAX_MID_CHANNEL 512 as in `min(512, in_channels[-1])`. The ablation switches default to
# the release (ABF, residual fed on, HCL (full, 4, 2, 1) with halving weights, review).
@registry.register("reviewkd", defaults=dict(weight=1.0, ce_weight=1.0, warmup_epochs=20.0,
                                             warmup_epoch_base=0, max_mid_channel=512,
                                             abf=True, feed="residual", hcl_levels=HCL_LEVELS,
                                             hcl_weights=(), review=True, teacher_bn_mode="eval"))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """ReviewKD with `cfg.reviewkd.{weight, ce_weight, warmup_epochs, warmup_epoch_base, max_mid_channel,
  teacher_bn_mode}` and the ablation switches `{abf, feed, hcl_levels, hcl_weights, review}`."""
  c = cfg.reviewkd
  weight, w_ce = float(c.weight), float(c.ce_weight)
  warmup, epoch_base, max_mid = float(c.warmup_epochs), int(c.warmup_epoch_base), int(c.max_mid_channel)
  if epoch_base not in (0, 1):
    raise UserError(f"config.reviewkd.warmup_epoch_base={epoch_base}; valid: 0 (official release) "
                    "or 1 (mdistiller).")
  if c.feed not in FEEDS:
    raise UserError(f"config.reviewkd.feed={c.feed!r}; valid: 'residual' (the release: the fused map "
                    "before the 3x3 conv) or 'output' (the ABF output matched to the teacher).")
  hcl_levels, hcl_w = check_hcl(c.hcl_levels, c.hcl_weights)
  abf, feed, use_review = bool(c.abf), str(c.feed), bool(c.review)

  def head_for(student: Sequence[Any], teacher: Sequence[Any]) -> ReviewHead:
    # Rebuilt from the (static) shapes on every trace: init and loss always agree.
    return ReviewHead(make_plan(student, teacher, max_mid), abf=abf, feed=feed, review=use_review)

  def init(rng, student_out, teacher_out, data_info):
    del data_info
    _check_teacher(teacher_out)
    student = [base.at_least_f32(s) for s in student_levels(student_out)]
    head = head_for(student, teacher_levels(teacher_out))
    variables = head.init(rng, student, train=False)
    return variables["params"], {"batch_stats": variables["batch_stats"]}

  def loss(params, state, student_out, teacher_out, batch, progress):
    _check_teacher(teacher_out)
    student, teacher = student_levels(student_out), teacher_levels(teacher_out)
    review, batch_stats = review_loss(head_for(student, teacher), params, state["batch_stats"],
                                      student, teacher, hcl_levels, hcl_w)
    ce = base.cross_entropy(student_out[0], batch["label"])
    ramp = base.warmup_factor(progress, warmup, epoch_base)
    metrics = {"loss_ce": ce, "loss_reviewkd": review, "reviewkd_warmup": ramp}
    return w_ce * ce + weight * ramp * review, metrics, dict(state, batch_stats=batch_stats)

  # The release never calls teacher.eval(): its `,official` recipe sets teacher_bn_mode='batch_stats'.
  return base.Method(name="reviewkd", needs_teacher=True, loss=loss, init=init,
                     teacher_bn_mode=str(c.teacher_bn_mode))
