"""The method interface: a pure loss over student and teacher outputs.

A method is a frozen bundle of two pure functions, built from its config node:

* `init(rng, student_out, teacher_out, data_info) -> (params, state)`: the method's own
  trainable parameters (connectors, fusion modules, embeddings: optimised with the
  student, excluded from the exported student) and its non-gradient state (memory
  banks, counters), both pytrees, empty for logit methods. `data_info` is
  `{'num_train': int, 'num_classes': int, 'train_labels': np.ndarray,
  'teacher_variables': the (first) teacher's {'params', 'batch_stats'} when the method
  declares `needs_teacher_variables`, else None}`
  (OFD reads its margins from the teacher's BatchNorm parameters);
* `loss(params, state, student_out, teacher_out, batch, progress)
  -> (loss, metrics, new_state)`, where `batch` is `{'label': int (B,),
  'index': int (B,), 'rng': key}`: `index` holds the examples' positions in the
  training set (for per-example state such as CRD's memory bank) and `rng` is a
  fresh PRNG key for this step (e.g. for negative sampling). A label of -1 marks
  an unlabelled example (STL-10's unlabelled split); `cross_entropy` skips it.

`student_out` / `teacher_out` are a model's `(logits, features)`; `teacher_out`
is None for methods without a teacher and a list for ensembles. The train loop
knows nothing else about a method, so adding one never touches it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp

from kdjax.errors import UserError

PyTree = Any
TEACHER_BN_MODES = ("eval", "batch_stats")
ModelOutput = tuple[jax.Array, dict[str, Any]]


@flax.struct.dataclass
class Progress:
  """Where training stands; `epoch` is 0-indexed and counts finished epochs."""
  step: jax.Array
  epoch: jax.Array


def empty_init(rng: jax.Array, student_out: ModelOutput, teacher_out: Optional[ModelOutput],
               data_info: dict[str, Any]) -> tuple[PyTree, PyTree]:
  """`init` of methods without parameters or state."""
  del rng, student_out, teacher_out, data_info
  return {}, {}


LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array], PyTree]]
ParamPath = tuple[str, ...]


def trains_all(path: ParamPath) -> bool:
  """Mask of a pass that moves every trainable parameter."""
  del path
  return True


def trains_method(path: ParamPath) -> bool:
  """Mask of a pass that moves only the method's own parameters (e.g. FT's paraphraser)."""
  return path[0] == "method"


@dataclasses.dataclass(frozen=True)
class Update:
  """One optimisation pass of a step: a loss, the parameters it moves, and its optimizer.

  `trains(path)` gets a parameter's path in the trainable tree, e.g.
  `('method', 'disc0', 'conv1', 'kernel')` or `('student', 'layer1', ...)`;
  parameters it rejects get no update (no weight decay, no momentum) from this
  pass. `optimizer(steps_per_epoch)` returns the pass's `(optax transformation,
  LR schedule)` (the schedule is what the run logs as `lr` when this is the main pass);
  None means the run's optimizer (`config.optim`, PyTorch SGD).

  `grad_groups` > 1: `loss` returns a tuple of that many scalar terms instead of one
  loss, the step takes the gradient of each term separately (one forward pass, one
  backward pass per term) and the optimizer's `update` receives the tuple of gradient
  trees (DOT's separate momenta for the task and the distillation gradients).
  """
  loss: LossFn
  trains: Callable[[ParamPath], bool] = trains_all
  optimizer: Optional[Callable[[int], tuple[Any, Any]]] = None
  grad_groups: int = 1


@dataclasses.dataclass(frozen=True)
class Prestage:
  """Epochs run before the main training with their own loss (AB/FT/FSP initialisation).

  The trainer runs `update` for `epochs` epochs from the fresh initial state, in
  the same compiled step, checkpointed under `<workdir>/prestage`, then starts the
  main training from the resulting parameters, batch statistics and method state
  (with fresh optimizer state).
  """
  epochs: int
  update: Update


@dataclasses.dataclass(frozen=True)
class Deployed:
  """The network a method's student is at test time, when it is more than the student (SimKD).

  `arch(student_arch, student_out, teacher_out)` names it in the model zoo (`kdjax.models.get`)
  from the shapes of both networks' outputs; `variables(student_variables, method_params,
  method_state)` are its variables. The trainer evaluates, keeps as best and exports that network.
  """
  arch: Callable[[str, Any, Any], str]
  variables: Callable[[dict, PyTree, PyTree], dict]


@dataclasses.dataclass(frozen=True)
class Method:
  """A distillation method: its name, whether it needs a teacher, `init` and `loss`.

  Optional parts (all generic to the trainer):
  * `trains`: mask of the parameters the main `loss` moves (default: all);
  * `optimizer`: the main pass's `(tx, schedule)` factory, as `Update.optimizer`
    (default None: the run's `config.optim`);
  * `extra_updates`: further passes in the same step, each a fresh forward pass
    after the previous pass's update (AFD's adversarial feature-map pass);
  * `prestage`: epochs of another loss before the main training (AB, FT);
  * `multi_teacher`: `loss` accepts `teacher_out` as a list, one output per
    teacher, when `config.teachers` names several;
  * `shared_labels`: the loss compares teacher and student over one label space
    (True for KD-style methods); False lets a teacher trained on another dataset
    distill (FKD's cross-dataset setting);
  * `needs_teacher_variables`: `init` reads the (first) teacher's variables from
    `data_info['teacher_variables']` (OFD's margins); None is passed otherwise;
  * `views`: independently augmented views of each batch (KDCL: one per cohort
    member, stacked on a leading axis; the teacher, if any, sees the first);
  * `view_transforms`: per view, a further augmentation `(key, uint8 batch) -> uint8 batch`
    applied on device after the crop and flip (None: crop and flip only), e.g. MLKD's
    RandAugment view;
  * `view_forward`: `stacked` (the model gets the views stacked, a cohort member each),
    `each` (the student, and the teacher, run once on every view in order, BatchNorm updated
    view after view as two PyTorch forward calls do) or `concat` (one call on the views
    concatenated along the batch: BatchNorm statistics over all of them, as SSKD's 4B batch);
    with `each` and `concat`, `loss` gets a list of outputs per network, one per view;
  * `view_flip`: `each` view flipped independently, or one `shared` flip per image before its
    views are cropped and transformed (SSKD's rotations of one flipped image);
  * `teacher_bn_mode`: how the frozen teacher's BatchNorms run, `eval` (running
    statistics) or `batch_stats` (the batch's, as references that never call
    `teacher.eval()`: mdistiller's OFD, ReviewKD's release);
  * `lapack_in_step`: the loss runs LAPACK decompositions (KDSVD's SVDs), which several
    seeds unrolled in one XLA:CPU program can deadlock (kdjax/linalg.py);
  * `split_loss`: `loss` as its two terms, `((task, distillation), metrics, state)` with
    `loss` = task + distillation (KD, DKD), for optimizers that treat them apart (DOT);
  * `grad_groups`: as `Update.grad_groups`, for the main pass;
  * `deployed`: what the student is at test time when it is more than the student network
    (SimKD: with its projector and the teacher's classifier); None: the student.
  """
  name: str
  needs_teacher: bool
  loss: LossFn
  init: Callable[..., tuple[PyTree, PyTree]] = empty_init
  trains: Callable[[ParamPath], bool] = trains_all
  optimizer: Optional[Callable[[int], tuple[Any, Any]]] = None
  extra_updates: tuple[Update, ...] = ()
  prestage: Optional[Prestage] = None
  multi_teacher: bool = False
  shared_labels: bool = True
  needs_teacher_variables: bool = False
  views: int = 1
  view_transforms: tuple = ()
  view_forward: str = "stacked"
  view_flip: str = "each"
  teacher_bn_mode: str = "eval"
  lapack_in_step: bool = False
  split_loss: Optional[LossFn] = None
  grad_groups: int = 1
  deployed: Optional[Deployed] = None

  def __post_init__(self):
    if self.teacher_bn_mode not in TEACHER_BN_MODES:
      raise UserError(f"method {self.name!r}: teacher BatchNorm mode {self.teacher_bn_mode!r}; valid: "
                      f"{', '.join(map(repr, TEACHER_BN_MODES))}.")
    if self.views < 1:
      raise UserError(f"method {self.name!r}: {self.views} views per step; it must be >= 1.")
    if self.view_transforms and len(self.view_transforms) != self.views:
      raise UserError(f"method {self.name!r}: {len(self.view_transforms)} view transforms for {self.views} views.")
    if self.view_forward not in ("stacked", "each", "concat") or (
        self.view_forward != "stacked" and self.multi_teacher):
      raise UserError(f"method {self.name!r}: view_forward={self.view_forward!r}; 'stacked', 'each' or "
                      "'concat' ('each' and 'concat' take one teacher: its outputs are a list over the views).")
    if self.view_flip not in ("each", "shared"):
      raise UserError(f"method {self.name!r}: view_flip={self.view_flip!r}; 'each' or 'shared'.")

  @property
  def passes(self) -> tuple[Update, ...]:
    """The optimisation passes of one step, in order: the main `loss`, then `extra_updates`."""
    return (Update(self.loss, self.trains, self.optimizer, self.grad_groups),) + tuple(self.extra_updates)


def summed(split_loss: LossFn) -> LossFn:
  """The loss whose value is the sum of `split_loss`'s terms (metrics and state passed through)."""

  def loss(*args):
    terms, metrics, state = split_loss(*args)
    return sum(terms[1:], terms[0]), metrics, state

  return loss


def at_least_f32(x: jax.Array) -> jax.Array:
  """`x` in float32, or wider if it already is (losses never run in bf16/fp16)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy over the labelled examples (label >= 0), in float32."""
  logp = jax.nn.log_softmax(at_least_f32(logits), axis=-1)
  labelled = labels >= 0
  nll = -jnp.take_along_axis(logp, jnp.maximum(labels, 0)[:, None], axis=-1)[:, 0]
  return jnp.sum(jnp.where(labelled, nll, 0.0)) / jnp.maximum(jnp.sum(labelled), 1)


def teacher_list(teacher_out: Any) -> list[ModelOutput]:
  """`teacher_out` as a list of (logits, features), whether one teacher or an ensemble."""
  return list(teacher_out) if isinstance(teacher_out, list) else [teacher_out]


def ensemble_logits(teacher_out: Any) -> jax.Array:
  """The teachers' mean logits (one teacher: its logits), the soft target of KD-style ensembles."""
  outs = teacher_list(teacher_out)
  return sum(at_least_f32(o[0]) for o in outs) / len(outs)


def standardize_logits(logits: jax.Array) -> jax.Array:
  """Logit standardization (Sun et al., CVPR 2024): each sample's logits z-scored over the classes,
  (z - mean) / (1e-7 + std) with the unbiased (n - 1) std, as the official code computes it."""
  z = at_least_f32(logits)
  mean = jnp.mean(z, axis=-1, keepdims=True)
  std = jnp.std(z, axis=-1, keepdims=True, ddof=1)
  return (z - mean) / (1e-7 + std)


def logit_preprocess(standardize: bool) -> Callable[[jax.Array], jax.Array]:
  """What a logit method applies to both sides' logits: `standardize_logits` with LS on, else nothing."""
  return standardize_logits if standardize else (lambda z: z)


def warmup_factor(progress: Progress, warmup_epochs: float, epoch_base: int) -> jax.Array:
  """min(epoch / warmup, 1) with the epoch counted from `epoch_base` (mdistiller: 1)."""
  if warmup_epochs <= 0:
    return jnp.float32(1.0)
  epoch = progress.epoch.astype(jnp.float32) + epoch_base
  return jnp.minimum(epoch / warmup_epochs, 1.0)
