"""The compiled step: train state, one train step, one evaluation.

`train_step` and `evaluate` are top-level pure functions of their arrays plus a
frozen spec (`StepSpec`, `EvalSpec`) bound with `functools.partial`, as in flax's
examples/imagenet. One train step = on-device batch selection and augmentation +
teacher forward (stop_gradient) + each of the method's passes (forward, backward,
masked optax update). Everything that varies per run (state, teacher variables,
data) is an argument, so the step maps over a leading axis with `jax.vmap`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from kdjax import methods as methods_lib
from kdjax.data import augment
from kdjax.train import optim
from kdjax.train import teachers as teachers_lib

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything the step updates; the trainable tree is {'student': ..., 'method': ...}."""
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  method_state: PyTree
  opt_state: PyTree
  # -1, or the first step whose loss/gradient was not finite (its update is skipped).
  nonfinite_step: jax.Array


def student_variables(state: TrainState) -> dict:
  """The student network's variables in `state`."""
  return {"params": state.params["student"], "batch_stats": state.batch_stats}


def create_train_state(rng: jax.Array, model, method: methods_lib.Method,
                       txs: Sequence[optax.GradientTransformation],
                       image_shape: tuple[int, ...], teacher_out_fn=None,
                       data_info: Optional[dict[str, Any]] = None) -> TrainState:
  """Initialises the student, the method's own parameters/state and the optimizer."""
  model_key, method_key = jax.random.split(rng)
  x = jnp.zeros((2, *image_shape), jnp.float32)
  variables = model.init(model_key, x, train=False)
  student_out = model.apply(variables, x, train=False)
  teacher_out = teacher_out_fn(x) if teacher_out_fn is not None else None
  method_params, method_state = method.init(method_key, student_out, teacher_out, data_info or {})
  params = {"student": variables["params"], "method": method_params}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), method_state=method_state,
                    opt_state=optim.init_opt_state(txs, params), nonfinite_step=-jnp.ones((), jnp.int32))


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """What a train step holds constant: the networks, the passes and the data recipe."""
  model: Any
  passes: tuple[methods_lib.Update, ...]  # the method's main loss, then its extra updates
  txs: tuple[optax.GradientTransformation, ...]  # one (masked) optimizer per pass
  lr_fn: optax.Schedule
  teacher_forward: Optional[Callable]  # (teacher_vars, x, key) -> teacher_out, or None (no teacher)
  batch_size: int
  steps_per_epoch: int
  mean: Sequence[float]
  std: Sequence[float]
  crop_padding: int
  flip: bool
  aug_key: jax.Array
  batch_sharding: Any
  views: int = 1
  view_transforms: tuple = ()  # per view: None or (key, uint8 batch) -> uint8 batch
  view_forward: str = "stacked"  # "each" / "concat": the networks run on every view (Method.view_forward)
  view_flip: str = "each"  # or "shared": one flip per image for all its views (Method.view_flip)
  streaming: bool = False
  # The teacher's forward ends before the student's starts. On XLA:CPU with Eigen convolutions
  # (kdjax/cpu.py) the two networks' independent convolutions otherwise run at once and contend
  # for the cores: the DKD resnet32x4 -> resnet8x4 step took 1206 ms without, 1049 ms with it.
  teacher_first: bool = False


def select_batch(spec: StepSpec, step, images, labels, perm, key):
  """(student input, teacher input, labels, indices) of this step, augmented on device.

  Resident data (CIFAR): `images`/`labels` are the whole training set on device and
  `perm` this epoch's order. Streaming data (ImageNet): they are this step's
  augmented global batch and `perm` its examples' indices.
  """
  if spec.streaming:
    x = augment.normalize(images, spec.mean, spec.std)
    return x, x, labels, perm
  i = step % spec.steps_per_epoch
  idx = jax.lax.dynamic_slice_in_dim(perm, i * spec.batch_size, spec.batch_size)
  idx = jax.lax.with_sharding_constraint(idx, spec.batch_sharding)
  raw = images[idx]
  flip_each = spec.flip
  if spec.view_flip == "shared" and spec.flip:  # one flip of each image, then the views (SSKD)
    flip_key, key = jax.random.split(key)
    raw, flip_each = augment.random_crop_flip(flip_key, raw, 0, True), False
  xs = []
  for k, view_key in enumerate(jax.random.split(key, spec.views)):
    transform = spec.view_transforms[k] if spec.view_transforms else None
    if transform is None:
      view = augment.random_crop_flip(view_key, raw, spec.crop_padding, flip_each)
    else:
      crop_key, transform_key = jax.random.split(view_key)
      view = transform(transform_key, augment.random_crop_flip(crop_key, raw, spec.crop_padding, flip_each))
    xs.append(augment.normalize(view, spec.mean, spec.std))
  if spec.views > 1 and spec.view_forward in ("each", "concat"):
    return xs, xs, labels[idx], idx  # every network sees every view
  # Several views (one per cohort member) stack on a leading axis; the teacher sees the first.
  return (xs[0] if spec.views == 1 else jnp.stack(xs)), xs[0], labels[idx], idx


def train_step(state: TrainState, teacher_vars: Sequence[PyTree], images, labels, perm, *, spec: StepSpec):
  """One step of every pass of the method; `(new_state, metrics)`. A non-finite step is skipped.

  `teacher_vars` holds one variables tree per teacher (empty without a teacher).
  """
  # Traced under the batch's mesh, so that methods can split row-wise work that XLA would run
  # whole on every device (kdjax/data_parallel.py).
  mesh = getattr(spec.batch_sharding, "mesh", None)
  with (jax.sharding.use_abstract_mesh(mesh.abstract_mesh) if mesh is not None else contextlib.nullcontext()):
    return _train_step(state, teacher_vars, images, labels, perm, spec)


def _train_step(state: TrainState, teacher_vars, images, labels, perm, spec: StepSpec):
  """`train_step` under its mesh."""
  crop_key, method_key, dropout_key, teacher_key = jax.random.split(
      jax.random.fold_in(spec.aug_key, state.step), 4)
  x, x_teacher, y, idx = select_batch(spec, state.step, images, labels, perm, crop_key)
  progress = methods_lib.Progress(step=state.step, epoch=state.step // spec.steps_per_epoch)
  views = isinstance(x, list)
  calls, unpack = _network_calls(spec, x)
  teacher_out = None
  if spec.teacher_forward is not None:
    teacher_out = (unpack([spec.teacher_forward(teacher_vars, v, teacher_key) for v in calls]) if views
                   else spec.teacher_forward(teacher_vars, x_teacher, teacher_key))
    if spec.teacher_first:
      teacher_out, calls = jax.lax.optimization_barrier((teacher_out, calls))

  params, batch_stats, method_state = state.params, state.batch_stats, state.method_state
  opt_states = optim.pass_opt_states(spec.txs, state.opt_state)
  new_opt_states, metrics, finite, total, logits = [], {}, jnp.array(True), 0.0, None
  for k, (update, tx_k) in enumerate(zip(spec.passes, spec.txs)):
    batch = {"label": y, "index": idx, "rng": jax.random.fold_in(method_key, k)}

    def loss_fn(p, update=update, batch_stats=batch_stats, method_state=method_state, k=k):
      outs = []
      for v, view in enumerate(calls):  # BatchNorm statistics carried call to call
        out, mutated = spec.model.apply({"params": p["student"], "batch_stats": batch_stats},
                                        view, train=True, mutable=["batch_stats"],
                                        rngs={"dropout": jax.random.fold_in(dropout_key, k + 1000 * v)})
        batch_stats = mutated["batch_stats"]
        outs.append(out)
      out = unpack(outs)
      loss, pass_metrics, new_method_state = update.loss(p["method"], method_state, out,
                                                         teacher_out, batch, progress)
      return loss, (pass_metrics, batch_stats, new_method_state, (out[0] if views else out)[0])

    (loss, (pass_metrics, batch_stats, method_state, pass_logits)), grads = _value_and_grads(
        loss_fn, params, update.grad_groups)
    updates, opt_state_k = tx_k.update(grads, opt_states[k], params)
    params = optax.apply_updates(params, updates)
    new_opt_states.append(opt_state_k)
    finite = finite & jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    metrics.update(pass_metrics)
    if k > 0:
      metrics[f"loss_pass{k}"] = loss
    total = total + loss
    logits = pass_logits if logits is None else logits
  # An overflow can also appear only in the update (finite gradient, inf parameters).
  finite = finite & jnp.isfinite(optax.tree.norm(params))
  updated = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                          method_state=method_state, opt_state=optim.pack_opt_states(new_opt_states))
  # A non-finite step leaves the state untouched and records where it happened;
  # the host stops the run before the next checkpoint.
  skipped = state.replace(step=state.step + 1, nonfinite_step=jnp.where(
      state.nonfinite_step < 0, state.step, state.nonfinite_step))
  new_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), updated, skipped)
  metrics = dict(metrics, loss=total, lr=spec.lr_fn(state.step),
                 top1=100.0 * jnp.sum(jnp.argmax(logits, -1) == y) / jnp.maximum(jnp.sum(y >= 0), 1))
  return new_state, metrics


def _network_calls(spec: StepSpec, x) -> tuple[list, Callable]:
  """(the inputs a network is called on, how its outputs become what the method gets). One input
  normally; with a list of views (view_forward 'each' or 'concat') every network sees every view,
  one call per view ('each') or one call on the views concatenated along the batch ('concat'),
  and the method gets a list of outputs, one per view."""
  if not isinstance(x, list):
    return [x], lambda outs: outs[0]
  if spec.view_forward == "concat":
    return [jnp.concatenate(x)], lambda outs: _split_views(outs[0], len(x))
  return x, lambda outs: outs


def _split_views(out: PyTree, n: int) -> list:
  """A model output computed on n views concatenated along the batch, as n per-view outputs."""
  parts = jax.tree.map(lambda a: jnp.split(a, n), out)
  return [jax.tree.map(lambda a, i=i: a[i], parts, is_leaf=lambda a: isinstance(a, list)) for i in range(n)]


def _value_and_grads(loss_fn: Callable, params: PyTree, groups: int):
  """`((loss, aux), grads)` of a pass; with several gradient groups `loss_fn` returns one term
  per group, `loss` is their sum and `grads` a tuple with each term's gradient (one forward)."""
  if groups == 1:
    return jax.value_and_grad(loss_fn, has_aux=True)(params)
  terms, vjp_fn, aux = jax.vjp(loss_fn, params, has_aux=True)
  if len(terms) != groups:
    raise ValueError(f"a pass with {groups} gradient groups returned {len(terms)} loss terms")
  zeros = [jnp.zeros_like(t) for t in terms]
  grads = tuple(vjp_fn(tuple(jnp.ones_like(t) if j == i else zeros[j] for j, t in enumerate(terms)))[0]
                for i in range(groups))
  return (sum(terms[1:], terms[0]), aux), grads


def step_spec(model, method: methods_lib.Method, txs: Sequence[optax.GradientTransformation], lr_fn,
              teachers: Sequence[teachers_lib.Teacher] = (), *, ensemble: bool = False,
              teacher_bn_mode: str = "eval", **data) -> StepSpec:
  """The `StepSpec` of `method` with one optimizer per pass and its `teachers` (modules and inputs)."""
  txs = optim.as_passes(txs)
  passes = method.passes
  if len(txs) != len(passes):
    raise ValueError(f"method {method.name!r} has {len(passes)} passes but {len(txs)} optimizers")
  forward = None
  if teachers:
    forward = teachers_lib.make_teacher_forward(teachers, mean=data["mean"], std=data["std"],
                                                bn_mode=teacher_bn_mode, ensemble=ensemble)
  return StepSpec(model=model, passes=passes, txs=txs, lr_fn=lr_fn, teacher_forward=forward,
                  view_transforms=tuple(method.view_transforms), view_forward=method.view_forward,
                  view_flip=method.view_flip, **data)


def make_train_step(model, method: methods_lib.Method, txs: Sequence[optax.GradientTransformation], lr_fn,
                    teachers: Sequence[teachers_lib.Teacher] = (), **kwargs) -> Callable:
  """`train_step(state, teacher_vars, images, labels, perm) -> (state, metrics)` for `method`."""
  return functools.partial(train_step, spec=step_spec(model, method, txs, lr_fn, teachers, **kwargs))


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """What an evaluation holds constant."""
  model: Any
  eval_batch_size: int
  mean: Sequence[float]
  std: Sequence[float]
  batch_sharding: Any
  streaming: bool = False


def correct_counts(spec: EvalSpec, variables, x, y) -> jax.Array:
  """Correct predictions of the model, then of each cohort member, on one batch (label -1 never counts)."""
  x = jax.lax.with_sharding_constraint(x, spec.batch_sharding)
  logits, features = spec.model.apply(variables, augment.normalize(x, spec.mean, spec.std), train=False)
  heads = [logits] + [m[0] for m in features.get("members", ())] if isinstance(features, dict) else [logits]
  return jnp.stack([jnp.sum((jnp.argmax(h, -1) == y) & (y >= 0)) for h in heads])


def evaluate(variables, images, labels, *, spec: EvalSpec) -> jax.Array:
  """Correct counts over a padded resident test set (streaming: over one eval batch)."""
  if spec.streaming:
    return correct_counts(spec, variables, images, labels)
  bs = spec.eval_batch_size
  shape = jax.eval_shape(functools.partial(correct_counts, spec), variables, images[:bs], labels[:bs]).shape

  def body(b, correct):
    x = jax.lax.dynamic_slice_in_dim(images, b * bs, bs)
    y = jax.lax.dynamic_slice_in_dim(labels, b * bs, bs)
    return correct + correct_counts(spec, variables, x, y)

  return jax.lax.fori_loop(0, images.shape[0] // bs, body, jnp.zeros(shape, jnp.int32))


def make_eval_fn(model, *, eval_batch_size: int, mean, std, batch_sharding, streaming: bool = False):
  """`evaluate(variables, images, labels) -> correct counts` (model first, then cohort members)."""
  return functools.partial(evaluate, spec=EvalSpec(model, eval_batch_size, mean, std, batch_sharding,
                                                   streaming))
