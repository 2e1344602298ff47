"""Training and evaluation.

One compiled train step = on-device batch selection and augmentation + teacher
forward (eval mode, stop_gradient) + student forward/backward + optax update. It
is `jax.jit`-ed over a 1-D device mesh: the state, the teacher and the resident
dataset are replicated, the batch is sharded on its leading axis, and XLA inserts
the gradient all-reduce. BatchNorm statistics are therefore over the global
batch, as on the single GPU of the CIFAR references.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, Optional

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from kdjax import checkpoint as ckpt_lib
from kdjax import data as data_lib
from kdjax import methods as methods_lib
from kdjax import models as models_lib
from kdjax import recipes
from kdjax.data import augment
from kdjax.errors import UserError

PyTree = Any


class NonFiniteLossError(UserError):
  """The loss or its gradient became NaN/inf; the run stopped without checkpointing it."""


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


def create_learning_rate_fn(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """Step-wise LR: `optim.lr`, times `lr_decay` from each 0-indexed milestone epoch on."""
  boundaries: dict[int, float] = {}
  for m in config.optim.lr_milestones:
    boundaries[int(m) * steps_per_epoch] = boundaries.get(int(m) * steps_per_epoch, 1.0) * config.optim.lr_decay
  return optax.piecewise_constant_schedule(config.optim.lr, boundaries)


def create_optimizer(config: ml_collections.ConfigDict, lr_fn: optax.Schedule) -> optax.GradientTransformation:
  """PyTorch SGD: coupled L2 on every parameter, then momentum (no dampening), then -lr."""
  return optax.chain(
      optax.add_decayed_weights(config.optim.weight_decay),
      optax.sgd(lr_fn, momentum=config.optim.momentum or None, nesterov=config.optim.nesterov))


def _path_names(path) -> tuple[str, ...]:
  """A pytree key path as a tuple of names, e.g. ('student', 'layer1', '0', 'conv1', 'kernel')."""
  return tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def masked(tx: optax.GradientTransformation, trains) -> optax.GradientTransformation:
  """`tx` on the parameters `trains(path)` accepts; the others get no update at all."""
  if trains is methods_lib.base.trains_all:
    return tx

  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "on" if trains(_path_names(path)) else "off", params)

  return optax.multi_transform({"on": tx, "off": optax.set_to_zero()}, labels)


def create_optimizers(config: ml_collections.ConfigDict, method: methods_lib.Method, lr_fn: optax.Schedule,
                      steps_per_epoch: int, main_optimizer=None):
  """One masked optimizer per pass of the step: the method's main loss, then its extra updates.

  Returns a single transformation for single-pass methods (every method but the
  online-adversarial ones), a list otherwise (a GradientTransformation is itself a tuple).
  """
  run_tx = create_optimizer(config, lr_fn)
  main = main_optimizer(steps_per_epoch) if main_optimizer is not None else run_tx
  txs = [masked(main, method.trains)]
  for update in method.extra_updates:
    txs.append(masked(update.optimizer(steps_per_epoch) if update.optimizer is not None else run_tx,
                      update.trains))
  return txs[0] if len(txs) == 1 else txs


def init_opt_state(tx, params: PyTree) -> PyTree:
  """Optimizer state of `tx` (one transformation, or a list with one per pass) for `params`."""
  return tuple(t.init(params) for t in tx) if isinstance(tx, list) else tx.init(params)


def create_train_state(rng: jax.Array, model, method: methods_lib.Method, tx,
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
                    opt_state=init_opt_state(tx, params), nonfinite_step=-jnp.ones((), jnp.int32))


@dataclasses.dataclass(frozen=True)
class TeacherInput:
  """How the student's normalised batch becomes the input of a teacher trained on other data."""
  mean: tuple[float, ...]
  std: tuple[float, ...]
  image_size: int  # 0: the student's size


def adapt_teacher_input(x: jax.Array, student_mean, student_std, spec: Optional[TeacherInput]) -> jax.Array:
  """Re-normalises (and resizes) a normalised student batch for a teacher of another dataset."""
  if spec is None:
    return x
  dtype = x.dtype
  raw = x * jnp.asarray(student_std, dtype) + jnp.asarray(student_mean, dtype)
  out = (raw - jnp.asarray(spec.mean, dtype)) / jnp.asarray(spec.std, dtype)
  if spec.image_size and spec.image_size != x.shape[1]:
    out = jax.image.resize(out, (x.shape[0], spec.image_size, spec.image_size, x.shape[3]),
                           "linear", antialias=True)
  return out


def _as_list(x) -> list:
  return list(x) if isinstance(x, (list, tuple)) else ([] if x is None else [x])


def make_teacher_forward(teacher_model, *, mean, std, teacher_inputs=None, bn_mode: str = "eval"):
  """`forward(teacher_vars, x, key) -> teacher_out` (a list for an ensemble), under stop_gradient."""
  modules = _as_list(teacher_model)
  ensemble = isinstance(teacher_model, (list, tuple))
  specs = _as_list(teacher_inputs) if ensemble else [teacher_inputs]

  def forward(teacher_vars, x, key):
    outs = []
    for k, (module, variables, spec) in enumerate(zip(modules, _as_list(teacher_vars) if ensemble
                                                      else [teacher_vars], specs)):
      xt = adapt_teacher_input(x, mean, std, spec)
      if bn_mode == "batch_stats":
        # Batch statistics, as the references that leave the teacher in train mode; its
        # running statistics are never read in that mode, so dropping them is exact.
        out, _ = module.apply(variables, xt, train=True, mutable=["batch_stats"],
                              rngs={"dropout": jax.random.fold_in(key, k)})
      else:
        out = module.apply(variables, xt, train=False)
      outs.append(jax.lax.stop_gradient(out))
    return outs if ensemble else outs[0]

  return forward


def make_train_step(model, method: methods_lib.Method, tx, lr_fn,
                    teacher_model, *, batch_size: int, steps_per_epoch: int, mean, std,
                    crop_padding: int, flip: bool, aug_key: jax.Array, batch_sharding,
                    teacher_inputs=None, teacher_bn_mode: str = "eval", views: int = 1,
                    streaming: bool = False):
  """Builds `train_step(state, teacher_vars, images, labels, perm) -> (state, metrics)`.

  Resident data (CIFAR): `images`/`labels` are the whole training set on device and
  `perm` this epoch's order; the step gathers and augments its batch. Streaming data
  (ImageNet, `streaming=True`): `images`/`labels` are this step's augmented global
  batch and `perm` its examples' indices.

  A step runs the method's passes in order (its main `loss`, then each of its
  `extra_updates`), each a forward/backward pass at the current parameters and an
  update with that pass's (masked) optimizer, so `tx` is one transformation or a
  list with one per pass.
  """
  txs = list(tx) if isinstance(tx, list) else [tx]
  passes = (methods_lib.base.Update(method.loss, method.trains),) + tuple(method.extra_updates)
  if len(txs) != len(passes):
    raise ValueError(f"method {method.name!r} has {len(passes)} passes but {len(txs)} optimizers")
  teacher_forward = None
  if teacher_model is not None:
    teacher_forward = make_teacher_forward(teacher_model, mean=mean, std=std,
                                           teacher_inputs=teacher_inputs, bn_mode=teacher_bn_mode)

  def select_batch(step, images, labels, perm, key):
    """(student input, teacher input, labels, indices) of this step, augmented on device."""
    if streaming:
      x = augment.normalize(images, mean, std)
      return x, x, labels, perm
    i = step % steps_per_epoch
    idx = jax.lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)
    idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    raw = images[idx]
    keys = jax.random.split(key, views)
    xs = [augment.normalize(augment.random_crop_flip(k, raw, crop_padding, flip), mean, std)
          for k in keys]
    # Several views (one per cohort member) stack on a leading axis; the teacher sees the first.
    return (xs[0] if views == 1 else jnp.stack(xs)), xs[0], labels[idx], idx

  def train_step(state: TrainState, teacher_vars, images, labels, perm):
    crop_key, method_key, dropout_key, teacher_key = jax.random.split(
        jax.random.fold_in(aug_key, state.step), 4)
    x, x_teacher, y, idx = select_batch(state.step, images, labels, perm, crop_key)
    progress = methods_lib.Progress(step=state.step, epoch=state.step // steps_per_epoch)
    teacher_out = None
    if teacher_forward is not None:
      teacher_out = teacher_forward(teacher_vars, x_teacher, teacher_key)

    params, batch_stats, method_state = state.params, state.batch_stats, state.method_state
    opt_states = state.opt_state if len(txs) > 1 else (state.opt_state,)
    new_opt_states, metrics, finite, total = [], {}, jnp.array(True), 0.0
    logits = None
    for k, (update, tx_k) in enumerate(zip(passes, txs)):
      batch = {"label": y, "index": idx, "rng": jax.random.fold_in(method_key, k)}

      def loss_fn(p, update=update, batch_stats=batch_stats, method_state=method_state, k=k):
        out, mutated = model.apply({"params": p["student"], "batch_stats": batch_stats},
                                   x, train=True, mutable=["batch_stats"],
                                   rngs={"dropout": jax.random.fold_in(dropout_key, k)})
        loss, pass_metrics, new_method_state = update.loss(p["method"], method_state, out,
                                                           teacher_out, batch, progress)
        return loss, (pass_metrics, mutated["batch_stats"], new_method_state, out[0])

      (loss, (pass_metrics, batch_stats, method_state, pass_logits)), grads = jax.value_and_grad(
          loss_fn, has_aux=True)(params)
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
                            method_state=method_state,
                            opt_state=tuple(new_opt_states) if len(txs) > 1 else new_opt_states[0])
    # A non-finite step leaves the state untouched and records where it happened;
    # the host stops the run before the next checkpoint.
    skipped = state.replace(step=state.step + 1, nonfinite_step=jnp.where(
        state.nonfinite_step < 0, state.step, state.nonfinite_step))
    new_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), updated, skipped)
    metrics = dict(metrics, loss=total, lr=lr_fn(state.step),
                   top1=100.0 * jnp.sum(jnp.argmax(logits, -1) == y) / jnp.maximum(jnp.sum(y >= 0), 1))
    return new_state, metrics

  return train_step


def make_eval_fn(model, *, eval_batch_size: int, mean, std, batch_sharding, streaming: bool = False):
  """Builds `evaluate(variables, images, labels) -> correct counts` over a padded test set.

  The counts are a vector: the model's logits first, then each cohort member's
  (online methods) when the model's features carry `members`. With
  `streaming=True`, `images`/`labels` are one already-batched eval batch.
  """

  def counts(variables, x, y):
    x = jax.lax.with_sharding_constraint(x, batch_sharding)
    logits, features = model.apply(variables, augment.normalize(x, mean, std), train=False)
    heads = [logits] + [m[0] for m in features.get("members", ())] if isinstance(features, dict) else [logits]
    # Padding rows carry label -1 and never count.
    return jnp.stack([jnp.sum((jnp.argmax(h, -1) == y) & (y >= 0)) for h in heads])

  def evaluate(variables, images, labels):
    if streaming:
      return counts(variables, images, labels)
    num_batches = images.shape[0] // eval_batch_size
    shape = jax.eval_shape(counts, variables, images[:eval_batch_size], labels[:eval_batch_size]).shape

    def body(b, correct):
      x = jax.lax.dynamic_slice_in_dim(images, b * eval_batch_size, eval_batch_size)
      y = jax.lax.dynamic_slice_in_dim(labels, b * eval_batch_size, eval_batch_size)
      return correct + counts(variables, x, y)

    return jax.lax.fori_loop(0, num_batches, body, jnp.zeros(shape, jnp.int32))

  return evaluate


def _pad_to(images: np.ndarray, labels: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
  """Pads the test split to a multiple of the eval batch with label -1."""
  n = images.shape[0]
  total = math.ceil(n / multiple) * multiple
  if total == n:
    return images, labels
  pad_images = np.zeros((total - n, *images.shape[1:]), images.dtype)
  return (np.concatenate([images, pad_images]),
          np.concatenate([labels, -np.ones(total - n, labels.dtype)]))


def _log(message: str) -> None:
  """Prints a progress line from process 0 only (every host runs the same loop)."""
  if jax.process_index() == 0:
    print(message, flush=True)


def _model_exists(name: str) -> bool:
  """Whether `name` is a registered model (or a cohort of registered models)."""
  exists = getattr(models_lib, "exists", None)
  return exists(name) if exists is not None else name in models_lib.names()


def _check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Rejects configs that cannot run, with the fix in the message."""
  if not _model_exists(config.model):
    raise UserError(f"unknown model {config.model!r} (config.model); valid models: "
                    f"{', '.join(models_lib.names())}")
  if config.batch_size % num_devices:
    raise UserError(f"config.batch_size={config.batch_size} is not divisible by the "
                    f"{num_devices} devices; pick a multiple of {num_devices}.")
  path = config.teacher.checkpoint
  if path and not os.path.exists(path):
    raise ckpt_lib.CheckpointError(
        f"teacher checkpoint {path!r} (config.teacher.checkpoint) does not exist. Give a kdjax run "
        "workdir, a directory from `python -m kdjax.convert`, a PyTorch .pth file, or leave it "
        "empty to train the teacher first.")
  if config.dtype not in ("float32", "bfloat16"):
    raise UserError(f"config.dtype={config.dtype!r}; valid: 'float32', 'bfloat16'.")
  if config.teacher.bn_mode not in ("eval", "batch_stats"):
    raise UserError(f"config.teacher.bn_mode={config.teacher.bn_mode!r}; valid: 'eval', 'batch_stats'.")
  if config.data.views < 1:
    raise UserError(f"config.data.views={config.data.views}; it must be >= 1.")


def _run_name(config: ml_collections.ConfigDict) -> str:
  """`<method>_<teacher>_<student>` (or `<method>_<student>` without a teacher)."""
  parts = [config.method] + ([config.teacher.arch] if config.teacher.arch else []) + [config.model]
  return "_".join(parts)


def default_workdir(config: ml_collections.ConfigDict) -> str:
  """`runs/<method>_<teacher>_<student>`, the CLI's workdir when none is given."""
  return os.path.join("runs", _run_name(config))


def _teacher_specs(config: ml_collections.ConfigDict) -> list[tuple[str, str, int]]:
  """(arch, checkpoint, seed offset) of each teacher: `config.teachers`, else `config.teacher`."""
  if not config.teachers:
    return [(config.teacher.arch, config.teacher.checkpoint, 0)]
  # `--config.teachers=a,b` arrives as one string: split it.
  entries = [e for item in config.teachers for e in str(item).split(",") if e.strip()]
  specs = []
  for i, entry in enumerate(entries):
    arch, _, path = str(entry).partition("=")
    specs.append((arch.strip(), path.strip(), i))
  return specs


def _load_teacher(config: ml_collections.ConfigDict, dataset: data_lib.Dataset, workdir: str,
                  spec: Optional[tuple[str, str, int]] = None, shared_labels: bool = True):
  """(module, variables, meta) of one teacher; trains it first if no checkpoint is given."""
  arch, path, index = spec if spec is not None else _teacher_specs(config)[0]
  if not arch:
    raise UserError(f"method {config.method!r} needs a teacher: set config.teacher.arch "
                    f"(valid models: {', '.join(models_lib.names())}).")
  if arch not in models_lib.names():
    field = "config.teachers" if config.teachers else "config.teacher.arch"
    raise UserError(f"unknown teacher model {arch!r} ({field}); valid models: "
                    f"{', '.join(models_lib.names())}")
  if path and not os.path.exists(path):
    raise ckpt_lib.CheckpointError(
        f"teacher checkpoint {path!r} (config.teachers) does not exist. Give a kdjax run workdir, a "
        "directory from `python -m kdjax.convert`, a PyTorch .pth file, or only the architecture "
        "to train the teacher first.")
  if not path and is_streaming(dataset):
    raise ckpt_lib.CheckpointError(
        f"no checkpoint for the {arch} teacher on {dataset.name}: set config.teacher.checkpoint (e.g. "
        "torchvision's pretrained .pth); kdjax auto-trains teachers only on in-memory datasets.")
  if not path:
    teacher_cfg = recipes.teacher_config(config)
    teacher_cfg.model = arch
    teacher_cfg.seed = config.seed + index
    data_name = config.teacher.dataset or dataset.name
    path = config.teacher.auto_workdir.format(dataset=data_name, arch=arch, workdir=workdir)
    if index:
      path += f"_seed{index}"
    if not ckpt_lib.is_model_dir(os.path.join(path, "model")):
      logging.info("no teacher checkpoint given: training the %s teacher on %s into %s first "
                   "(a later run reuses it).", arch, data_name, path)
      _log(f"[kdjax] no teacher checkpoint given (config.teacher.checkpoint): training {arch} on "
            f"{data_name} into {path} first; later runs reuse it.")
      train_and_evaluate(teacher_cfg, path)
  if path.endswith((".pth", ".pt", ".tar")):
    from kdjax import convert  # pylint: disable=import-outside-toplevel
    try:
      variables = convert.from_torch(path, arch, num_classes=dataset.num_classes)
    except (ValueError, ImportError) as e:
      raise ckpt_lib.CheckpointError(f"cannot use {path} as the {arch} teacher: {e}") from None
    meta = {"arch": arch, "num_classes": dataset.num_classes, "source": path}
  else:
    variables, meta = ckpt_lib.load_model(path)
  _check_teacher_meta(config, meta, arch, dataset, path, shared_labels)
  module = models_lib.get(arch, num_classes=meta.get("num_classes", dataset.num_classes),
                          dtype=_dtype(config))
  return module, {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}, meta


def _check_teacher_meta(config: ml_collections.ConfigDict, meta: dict, arch: str,
                        dataset: data_lib.Dataset, path: str, shared_labels: bool = True) -> None:
  """Refuses a teacher of another architecture, or of another label space for a KD-style method."""
  if meta.get("arch", arch) != arch:
    raise ckpt_lib.CheckpointError(
        f"teacher checkpoint {path} holds a {meta['arch']}, but config.teacher.arch is {arch}.")
  other_data = (meta.get("num_classes", dataset.num_classes) != dataset.num_classes
                or meta.get("dataset", dataset.name) != dataset.name)
  if shared_labels and other_data:
    raise UserError(
        f"the teacher {path} was trained on {meta.get('dataset', '?')} ({meta.get('num_classes')} "
        f"classes) but the student trains on {dataset.name} ({dataset.num_classes} classes); method "
        f"{config.method!r} compares their outputs over one label space. Use a teacher trained on "
        f"{dataset.name}, or a method without shared labels (e.g. fkd) for cross-dataset distillation.")
  if shared_labels and "mean" in meta and not np.allclose(meta["mean"], dataset.mean, atol=1e-3):
    raise ckpt_lib.CheckpointError(
        f"teacher checkpoint {path} was trained with input mean {meta['mean']}, but {dataset.name} "
        f"is normalised with {list(dataset.mean)}; a teacher must see the normalisation it was "
        "trained with.")


def _teacher_input(meta: dict, dataset: data_lib.Dataset) -> Optional[TeacherInput]:
  """The input adapter for a teacher trained with other normalisation or image size (else None)."""
  size = int(meta.get("image_size", _image_shape(dataset)[0]))
  same_norm = ("mean" not in meta or (np.allclose(meta["mean"], dataset.mean, atol=1e-6)
                                      and np.allclose(meta["std"], dataset.std, atol=1e-6)))
  if same_norm and size == _image_shape(dataset)[0]:
    return None
  return TeacherInput(mean=tuple(meta.get("mean", dataset.mean)), std=tuple(meta.get("std", dataset.std)),
                      image_size=size)


def load_teachers(config: ml_collections.ConfigDict, dataset: data_lib.Dataset, workdir: str,
                  method: methods_lib.Method):
  """(modules, variables, metas, input adapters): single values for one teacher, lists for `config.teachers`."""
  specs = _teacher_specs(config)
  if len(specs) > 1 and not method.multi_teacher:
    raise UserError(f"method {config.method!r} takes one teacher, but config.teachers names "
                    f"{len(specs)}; ensembles work with methods such as kd, dkd and fkd.")
  loaded = [_load_teacher(config, dataset, workdir, spec, method.shared_labels) for spec in specs]
  modules, variables, metas = (list(t) for t in zip(*loaded))
  inputs = [_teacher_input(m, dataset) for m in metas]
  if not config.teachers:
    return modules[0], variables[0], metas[0], inputs[0]
  return modules, variables, metas, inputs


def _dtype(config: ml_collections.ConfigDict):
  """The compute dtype, or None for float32 (Flax's default)."""
  return jnp.bfloat16 if config.dtype == "bfloat16" else None


class _Writer:
  """TensorBoard scalars and a JSON-lines epoch log, from process 0 only."""

  def __init__(self, workdir: str):
    self._on = jax.process_index() == 0
    self._tb = None
    if self._on:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      self._jsonl = os.path.join(workdir, "metrics.jsonl")

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if self._on:
      for k, v in values.items():
        self._tb.add_scalar(k, v, step)

  def epoch(self, record: dict) -> None:
    if self._on:
      with open(self._jsonl, "a") as f:
        f.write(json.dumps(record) + "\n")
      self._tb.flush()

  def close(self) -> None:
    if self._on:
      self._tb.close()


def _mean_metrics(buffer: list[dict]) -> dict[str, float]:
  """Averages a list of per-step metric dicts fetched from the device in one transfer."""
  host = jax.device_get(buffer)
  return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def make_mesh(devices: list) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over `devices`."""
  return jax.make_mesh((len(devices),), ("data",), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


@dataclasses.dataclass(frozen=True)
class Run:
  """The compiled pieces of one run, built by `build`."""
  state: TrainState
  train_step: Callable  # (state, teacher_vars, images, labels, perm) -> (state, metrics)
  permute: Callable     # key -> permutation of the training set
  evaluate: Callable    # (variables, images, labels) -> correct counts [model, members...]
  lr_fn: optax.Schedule
  steps_per_epoch: int
  eval_batch_size: int
  data_key: jax.Array
  tx: Any               # the optimizer (a list: one per pass)


def build(config: ml_collections.ConfigDict, dataset: data_lib.Dataset, mesh: jax.sharding.Mesh,
          teacher_model=None, teacher_vars=None, *, method: Optional[methods_lib.Method] = None,
          teacher_inputs=None, main_optimizer=None, main_learning_rate=None) -> Run:
  """Initial state and jitted step/eval functions for `config` on `mesh` (state replicated, batch sharded).

  `teacher_model`/`teacher_vars` are one teacher or lists (an ensemble);
  `teacher_inputs` the matching `TeacherInput` adapters (None: same data).
  """
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  method = method or methods_lib.get(config.method, config)
  model = models_lib.get(config.model, num_classes=dataset.num_classes, dtype=_dtype(config))
  streaming = is_streaming(dataset)
  num_train = _num_train(dataset)
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch == 0:
    raise UserError(f"config.batch_size={config.batch_size} exceeds the {num_train} training images.")
  lr_fn = create_learning_rate_fn(config, steps_per_epoch)
  tx = create_optimizers(config, method, lr_fn, steps_per_epoch, main_optimizer)
  if main_learning_rate is not None:
    lr_fn = main_learning_rate(steps_per_epoch)  # what the main pass's own optimizer follows

  init_key, data_key, aug_key = jax.random.split(jax.random.key(config.seed), 3)
  first_teacher_vars = _as_list(teacher_vars)[0] if teacher_vars is not None else None
  data_info = {"num_train": num_train, "num_classes": dataset.num_classes,
               "train_labels": None if streaming else dataset.train_labels,
               "teacher_variables": first_teacher_vars}
  teacher_out_fn = None
  if teacher_model is not None:
    forward = make_teacher_forward(teacher_model, mean=dataset.mean, std=dataset.std,
                                   teacher_inputs=teacher_inputs, bn_mode="eval")
    teacher_out_fn = lambda x: forward(teacher_vars, x, jax.random.key(0))
  state = jax.jit(functools.partial(create_train_state, model=model, method=method, tx=tx,
                                    image_shape=_image_shape(dataset),
                                    teacher_out_fn=teacher_out_fn, data_info=data_info),
                  out_shardings=replicated)(init_key)
  train_step = jax.jit(
      make_train_step(model, method, tx, lr_fn, teacher_model, batch_size=config.batch_size,
                      steps_per_epoch=steps_per_epoch, mean=dataset.mean, std=dataset.std,
                      crop_padding=config.data.crop_padding, flip=config.data.flip,
                      aug_key=aug_key, batch_sharding=batch_sharding, teacher_inputs=teacher_inputs,
                      teacher_bn_mode=config.teacher.bn_mode, views=config.data.views,
                      streaming=streaming),
      out_shardings=(replicated, replicated), donate_argnums=(0,))
  permute = jax.jit(lambda key: jax.random.permutation(key, num_train), out_shardings=replicated)
  num_devices = mesh.devices.size
  eval_bs = math.ceil(config.eval_batch_size / num_devices) * num_devices
  evaluate = jax.jit(make_eval_fn(model, eval_batch_size=eval_bs, mean=dataset.mean, std=dataset.std,
                                  batch_sharding=batch_sharding, streaming=streaming))
  return Run(state=state, train_step=train_step, permute=permute, evaluate=evaluate, lr_fn=lr_fn,
             steps_per_epoch=steps_per_epoch, eval_batch_size=eval_bs, data_key=data_key, tx=tx)


def is_streaming(dataset) -> bool:
  """Whether `dataset` streams batches from a host pipeline (ImageNet) instead of living on device."""
  return hasattr(dataset, "train_batches")


def _num_train(dataset) -> int:
  return int(dataset.num_train) if is_streaming(dataset) else int(dataset.train_images.shape[0])


def _image_shape(dataset) -> tuple[int, ...]:
  return tuple(dataset.image_shape) if is_streaming(dataset) else tuple(dataset.train_images.shape[1:])


def _load_dataset(config: ml_collections.ConfigDict) -> data_lib.Dataset:
  """The run's dataset, resized at load time when `config.data.image_size` asks for it."""
  kwargs = {"data_dir": config.data.data_dir or None, "download": config.data.download}
  if config.data.manual_dir:
    kwargs["manual_dir"] = config.data.manual_dir
  if config.data.unlabelled:
    kwargs["unlabelled"] = True
  if config.data.image_size:
    kwargs["image_size"] = config.data.image_size
  return data_lib.load(config.data.name, **kwargs)


class _Fitter:
  """The epoch loop of one phase (the main training or a method's prestage), resumable."""

  def __init__(self, config, run: Run, dataset: data_lib.Dataset, mesh, workdir: str, name: str,
               teacher_vars=None):
    self.config, self.run, self.workdir, self.name = config, run, workdir, name
    self.dataset = dataset
    self.streaming = is_streaming(dataset)
    replicated = NamedSharding(mesh, P())
    self.batch_sharding = NamedSharding(mesh, P("data"))
    put = lambda a: jax.device_put(a, replicated)
    self.teacher_vars = put(teacher_vars) if teacher_vars is not None else None
    if self.streaming:
      self.num_test = int(dataset.num_test)
      return
    # Resident data: the whole dataset on every device once; steps gather from it.
    self.train_images = put(dataset.train_images)
    self.train_labels = put(dataset.train_labels.astype(np.int32))
    test_images, test_labels = _pad_to(dataset.test_images, dataset.test_labels.astype(np.int32),
                                       run.eval_batch_size)
    self.test_images, self.test_labels = put(test_images), put(test_labels)
    self.num_test = dataset.test_images.shape[0]

  def _global(self, local: np.ndarray) -> jax.Array:
    """This process's rows of a batch -> the global batch array, sharded over every device."""
    global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
    return jax.make_array_from_process_local_data(self.batch_sharding, local, global_shape)

  def train_inputs(self, epoch: int):
    """The (images, labels, perm-or-indices) arguments of each step of `epoch`."""
    if not self.streaming:
      perm = self.run.permute(jax.random.fold_in(self.run.data_key, epoch))
      for _ in range(self.run.steps_per_epoch):
        yield self.train_images, self.train_labels, perm
      return
    batches = self.dataset.train_batches(epoch=epoch, batch_size=self.config.batch_size,
                                         seed=self.config.seed, process_index=jax.process_index(),
                                         process_count=jax.process_count())
    for _, batch in zip(range(self.run.steps_per_epoch), batches):
      yield self._global(batch["image"]), self._global(batch["label"]), self._global(batch["index"])

  def top1(self, evaluate, variables) -> list[float]:
    """Test top-1 (%) of the model, then of each cohort member."""
    if self.streaming:
      correct = None
      for batch in self.dataset.eval_batches(batch_size=self.run.eval_batch_size,
                                             process_index=jax.process_index(),
                                             process_count=jax.process_count()):
        c = evaluate(variables, self._global(batch["image"]), self._global(batch["label"]))
        correct = c if correct is None else correct + c
      correct = np.asarray(correct)
    else:
      correct = np.asarray(evaluate(variables, self.test_images, self.test_labels))
    return [100.0 * int(c) / self.num_test for c in correct.reshape(-1)]

  def fit(self, state: TrainState, history: dict, checkpoints: ckpt_lib.TrainStateCheckpoints, writer: "_Writer",
          on_epoch_end=None) -> tuple[TrainState, dict]:
    """Runs the remaining epochs; evaluates, logs and checkpoints after each."""
    config, run = self.config, self.run
    steps_per_epoch = run.steps_per_epoch
    start_epoch = len(history["epochs"])
    t_start = time.time()
    for epoch in range(start_epoch, config.epochs):
      epoch_metrics, buffer = [], []
      bar = _progress_bar(config, steps_per_epoch, f"{self.name} epoch {epoch + 1}/{config.epochs}")
      t_epoch = t_interval = time.time()
      images_in_interval = 0
      for i, (images, labels, perm) in enumerate(self.train_inputs(epoch)):
        state, metrics = run.train_step(state, self.teacher_vars, images, labels, perm)
        buffer.append(metrics)
        images_in_interval += config.batch_size
        if len(buffer) == config.log_every_steps or i == steps_per_epoch - 1:
          summary = _mean_metrics(buffer)  # waits for this interval's steps only
          _raise_if_nonfinite(state, config)
          dt = time.time() - t_interval
          summary["images_per_second"] = images_in_interval / max(dt, 1e-9)
          # The first interval includes compilation; keep it out of the throughput.
          if not (epoch == start_epoch and len(epoch_metrics) == 0):
            history["train_seconds"] += dt
            history["train_images"] += images_in_interval
          epoch_metrics.append(summary)
          writer.scalars(epoch * steps_per_epoch + i + 1, {f"train/{k}": v for k, v in summary.items()})
          if bar is not None:
            bar.update(len(buffer))
            bar.set_postfix(loss=f"{summary['loss']:.3f}", acc=f"{summary['top1']:.1f}",
                            img_s=f"{summary['images_per_second']:.0f}")
          buffer, t_interval, images_in_interval = [], time.time(), 0
      if bar is not None:
        bar.close()
      variables = {"params": state.params["student"], "batch_stats": state.batch_stats}
      tops = self.top1(run.evaluate, variables)
      record = {"epoch": epoch + 1, "test_top1": tops[0], "seconds": time.time() - t_epoch}
      if len(tops) > 1:
        record["members_test_top1"] = tops[1:]
      for k in epoch_metrics[0]:
        record[f"train_{k}"] = float(np.mean([m[k] for m in epoch_metrics]))
      history["epochs"].append(record)
      writer.scalars((epoch + 1) * steps_per_epoch,
                     {"test/top1": tops[0], **{f"test/member{k}_top1": t for k, t in enumerate(tops[1:])}})
      writer.epoch(record)
      if tops[0] > history["best_top1"]:
        history["best_top1"], history["best_epoch"] = tops[0], epoch + 1
        if on_epoch_end is not None:
          on_epoch_end(variables, epoch + 1, tops[0])
      history["wall_seconds"] = history.get("wall_seconds", 0.0) + (time.time() - t_start)
      t_start = time.time()
      checkpoints.save(epoch + 1, state, history)
      _log(f"[kdjax] {self.name} epoch {epoch + 1}/{config.epochs}: test top-1 {tops[0]:.2f}% "
            f"(best {history['best_top1']:.2f}% at epoch {history['best_epoch']}), "
            f"train loss {record['train_loss']:.4f}")
    return state, history


def _new_history() -> dict[str, Any]:
  return {"epochs": [], "best_top1": -1.0, "best_epoch": -1, "train_seconds": 0.0, "train_images": 0,
          "wall_seconds": 0.0}


def _run_prestage(config, method: methods_lib.Method, dataset, mesh, workdir: str, teachers) -> TrainState:
  """Runs (or resumes, or reuses) the method's prestage under `<workdir>/prestage`; its final state."""
  prestage = method.prestage
  update = prestage.update
  pre_method = dataclasses.replace(method, loss=update.loss, trains=update.trains, extra_updates=(),
                                   prestage=None)
  pre_config = ml_collections.ConfigDict(config.to_dict())
  pre_config.epochs = prestage.epochs
  teacher_model, teacher_vars, _, teacher_inputs = teachers
  run = build(pre_config, dataset, mesh, teacher_model, teacher_vars, method=pre_method,
              teacher_inputs=teacher_inputs, main_optimizer=update.optimizer,
              main_learning_rate=update.learning_rate)
  directory = os.path.join(workdir, "prestage")
  checkpoints = ckpt_lib.TrainStateCheckpoints(os.path.join(directory, "checkpoints"))
  state, history = run.state, _new_history()
  if checkpoints.latest_epoch() is not None:
    state, history = checkpoints.restore(state)
  if len(history["epochs"]) < prestage.epochs:
    _log(f"[kdjax] {config.method}: prestage of {prestage.epochs} epoch(s) into {directory}")
  writer = _Writer(directory)
  try:
    fitter = _Fitter(pre_config, run, dataset, mesh, directory, f"{config.method} prestage", teacher_vars)
    state, _ = fitter.fit(state, history, checkpoints, writer)
  finally:
    writer.close()
    checkpoints.close()
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config.model` with `config.method`, evaluates every epoch, returns results.json."""
  workdir = os.path.abspath(workdir)
  results_path = os.path.join(workdir, "results.json")
  if os.path.exists(results_path):
    with open(results_path) as f:
      results = json.load(f)
    if results.get("epochs") == config.epochs:
      _log(f"[kdjax] {workdir} already holds a finished run (results.json); nothing to do.")
      return results

  devices = jax.devices()
  _check_config(config, len(devices))
  method = methods_lib.get(config.method, config)
  dataset = _load_dataset(config)
  os.makedirs(workdir, exist_ok=True)

  teachers = (None, None, {}, None)
  if method.needs_teacher:
    teachers = load_teachers(config, dataset, workdir, method)
  teacher_model, teacher_vars, teacher_meta, teacher_inputs = teachers
  t_start = time.time()  # a teacher trained on the way has its own results.json

  mesh = make_mesh(devices)
  checkpoints = ckpt_lib.TrainStateCheckpoints(os.path.join(workdir, "checkpoints"))
  prestaged = None
  if method.prestage is not None and checkpoints.latest_epoch() is None:
    prestaged = _run_prestage(config, method, dataset, mesh, workdir, teachers)
  run = build(config, dataset, mesh, teacher_model, teacher_vars, method=method,
              teacher_inputs=teacher_inputs)
  state = run.state
  if prestaged is not None:
    # The main training starts from the prestage's parameters with a fresh optimizer.
    state = state.replace(params=prestaged.params, batch_stats=prestaged.batch_stats,
                          method_state=prestaged.method_state,
                          opt_state=jax.jit(functools.partial(init_opt_state, run.tx))(prestaged.params))

  history = _new_history()
  if checkpoints.latest_epoch() is not None:
    state, history = checkpoints.restore(state)
    _log(f"[kdjax] resumed from {workdir} after epoch {checkpoints.latest_epoch()}.")

  name = _run_name(config)
  fitter = _Fitter(config, run, dataset, mesh, workdir, name, teacher_vars)
  if teacher_model is not None and "teacher_top1" not in history:
    tops = []
    inputs = _as_list(teacher_inputs) if isinstance(teacher_model, list) else [teacher_inputs]
    for module, variables, spec, meta in zip(_as_list(teacher_model), _as_list(teacher_vars), inputs,
                                             _as_list(teacher_meta)):
      if spec is not None or meta.get("dataset", dataset.name) != dataset.name:
        continue  # a teacher of another dataset has no top-1 on this test set
      eval_teacher = jax.jit(make_eval_fn(module, eval_batch_size=run.eval_batch_size,
                                          mean=dataset.mean, std=dataset.std,
                                          batch_sharding=NamedSharding(mesh, P("data"))))
      tops.append(fitter.top1(eval_teacher, jax.device_put(variables, NamedSharding(mesh, P())))[0])
    if tops:
      history["teacher_top1"] = tops[0] if len(tops) == 1 else tops
      _log(f"[kdjax] teacher(s) {config.teacher.arch or ','.join(config.teachers)}: test top-1 "
            f"{tops}")

  def save_best(variables, epoch, top1):
    ckpt_lib.save_model(os.path.join(workdir, "best"), variables,
                        _model_meta(config, dataset, epoch, top1))

  writer = _Writer(workdir)
  history["wall_seconds"] = history.get("wall_seconds", 0.0) + (time.time() - t_start)
  try:
    state, history = fitter.fit(state, history, checkpoints, writer, on_epoch_end=save_best)
  finally:
    writer.close()
    checkpoints.close()
  t_start = time.time()

  variables = {"params": state.params["student"], "batch_stats": state.batch_stats}
  last = history["epochs"][-1] if history["epochs"] else {}
  last_top1 = last.get("test_top1", float("nan"))
  ckpt_lib.save_model(os.path.join(workdir, "model"), variables,
                      _model_meta(config, dataset, config.epochs, last_top1))
  members = _export_members(config, dataset, workdir, variables, last.get("members_test_top1"))
  history["wall_seconds"] = history.get("wall_seconds", 0.0) + (time.time() - t_start)
  results = {
      "method": config.method, "teacher": config.teacher.arch or (list(config.teachers) or None),
      "student": config.model,
      "dataset": dataset.name, "epochs": config.epochs, "seed": config.seed,
      "best_top1": history["best_top1"], "best_epoch": history["best_epoch"],
      "last_top1": last_top1, "teacher_top1": history.get("teacher_top1"),
      "wall_seconds": history["wall_seconds"],
      "images_per_second": history["train_images"] / max(history["train_seconds"], 1e-9),
      "devices": f"{len(devices)} x {devices[0].device_kind}",
      "config": config.to_dict(),
  }
  if members:
    results["members"] = members
  if jax.process_index() == 0:
    with open(results_path + ".tmp", "w") as f:
      json.dump(results, f, indent=2, default=str)
    os.replace(results_path + ".tmp", results_path)
  return results


def _export_members(config, dataset, workdir: str, variables: dict, last_tops) -> list[dict]:
  """Exports each member of a cohort model as its own model dir; their results entries."""
  if "+" not in config.model:
    return []
  names = config.model.split("+")
  history_path = os.path.join(workdir, "metrics.jsonl")
  per_epoch = []
  if os.path.exists(history_path):
    with open(history_path) as f:
      per_epoch = [json.loads(line).get("members_test_top1") for line in f if line.strip()]
  out = []
  for k, arch in enumerate(names):
    member = {"params": variables["params"][f"member{k}"],
              "batch_stats": variables["batch_stats"].get(f"member{k}", {})}
    meta = dict(_model_meta(config, dataset, config.epochs, last_tops[k] if last_tops else float("nan")),
                arch=arch)
    path = os.path.join(workdir, "members", f"member{k}")
    ckpt_lib.save_model(path, member, meta)
    tops = [e[k] for e in per_epoch if e]
    out.append({"arch": arch, "model_dir": path, "last_top1": last_tops[k] if last_tops else None,
                "best_top1": max(tops) if tops else None})
  return out


def _model_meta(config, dataset: data_lib.Dataset, epoch: int, top1: float) -> dict:
  """What a model directory records: enough to refuse it for the wrong use."""
  return {"arch": config.model, "num_classes": dataset.num_classes, "dataset": dataset.name,
          "mean": list(dataset.mean), "std": list(dataset.std), "epoch": epoch, "test_top1": top1,
          "method": config.method, "image_size": int(_image_shape(dataset)[0])}


def _raise_if_nonfinite(state: TrainState, config: ml_collections.ConfigDict) -> None:
  """Stops the run, before any checkpoint of the bad state, if a step was not finite."""
  bad = int(state.nonfinite_step)
  if bad >= 0:
    raise NonFiniteLossError(
        f"the {config.method} loss (or its gradient) was not finite at step {bad}; the run stopped "
        "and wrote no checkpoint after it. Lower config.optim.lr, check the method's "
        "hyperparameters, or resume from the last checkpoint.")


def _progress_bar(config, total: int, desc: str):
  """A tqdm bar on process 0 when enabled."""
  if not config.progress_bar or jax.process_index() != 0:
    return None
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
