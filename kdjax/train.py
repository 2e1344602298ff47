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


def create_train_state(rng: jax.Array, model, method: methods_lib.Method, tx: optax.GradientTransformation,
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
                    opt_state=tx.init(params), nonfinite_step=-jnp.ones((), jnp.int32))


def make_train_step(model, method: methods_lib.Method, tx: optax.GradientTransformation, lr_fn,
                    teacher_model, *, batch_size: int, steps_per_epoch: int, mean, std,
                    crop_padding: int, flip: bool, aug_key: jax.Array, batch_sharding):
  """Builds `train_step(state, teacher_vars, images, labels, perm) -> (state, metrics)`."""

  def train_step(state: TrainState, teacher_vars, images, labels, perm):
    # Select and augment this step's batch on device: no host round trip.
    i = state.step % steps_per_epoch
    idx = jax.lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)
    idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    y = labels[idx]
    crop_key, method_key, dropout_key = jax.random.split(jax.random.fold_in(aug_key, state.step), 3)
    x = augment.normalize(augment.random_crop_flip(crop_key, images[idx], crop_padding, flip), mean, std)
    progress = methods_lib.Progress(step=state.step, epoch=state.step // steps_per_epoch)

    teacher_out = None
    if teacher_model is not None:
      teacher_out = jax.lax.stop_gradient(teacher_model.apply(teacher_vars, x, train=False))

    def loss_fn(params):
      out, mutated = model.apply({"params": params["student"], "batch_stats": state.batch_stats},
                                 x, train=True, mutable=["batch_stats"],
                                 rngs={"dropout": dropout_key})
      loss, metrics, method_state = method.loss(params["method"], state.method_state, out,
                                                teacher_out, {"label": y, "index": idx, "rng": method_key},
                                                progress)
      return loss, (metrics, mutated["batch_stats"], method_state, out[0])

    (loss, (metrics, batch_stats, method_state, logits)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # An overflow can also appear only in the update (finite gradient, inf parameters).
    finite = (jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
              & jnp.isfinite(optax.tree.norm(params)))
    updated = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            method_state=method_state, opt_state=opt_state)
    # A non-finite step leaves the state untouched and records where it happened;
    # the host stops the run before the next checkpoint.
    skipped = state.replace(step=state.step + 1, nonfinite_step=jnp.where(
        state.nonfinite_step < 0, state.step, state.nonfinite_step))
    new_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), updated, skipped)
    metrics = dict(metrics, loss=loss, lr=lr_fn(state.step),
                   top1=100.0 * jnp.mean(jnp.argmax(logits, -1) == y))
    return new_state, metrics

  return train_step


def make_eval_fn(model, *, eval_batch_size: int, mean, std, batch_sharding):
  """Builds `evaluate(variables, images, labels) -> number correct` over a padded test set."""

  def evaluate(variables, images, labels):
    num_batches = images.shape[0] // eval_batch_size

    def body(b, correct):
      x = jax.lax.dynamic_slice_in_dim(images, b * eval_batch_size, eval_batch_size)
      y = jax.lax.dynamic_slice_in_dim(labels, b * eval_batch_size, eval_batch_size)
      x = jax.lax.with_sharding_constraint(x, batch_sharding)
      logits, _ = model.apply(variables, augment.normalize(x, mean, std), train=False)
      # Padding rows carry label -1 and never count.
      return correct + jnp.sum((jnp.argmax(logits, -1) == y) & (y >= 0))

    return jax.lax.fori_loop(0, num_batches, body, jnp.zeros((), jnp.int32))

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


def _check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Rejects configs that cannot run, with the fix in the message."""
  if config.model not in models_lib.names():
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


def _run_name(config: ml_collections.ConfigDict) -> str:
  """`<method>_<teacher>_<student>` (or `<method>_<student>` without a teacher)."""
  parts = [config.method] + ([config.teacher.arch] if config.teacher.arch else []) + [config.model]
  return "_".join(parts)


def default_workdir(config: ml_collections.ConfigDict) -> str:
  """`runs/<method>_<teacher>_<student>`, the CLI's workdir when none is given."""
  return os.path.join("runs", _run_name(config))


def _load_teacher(config: ml_collections.ConfigDict, dataset: data_lib.Dataset, workdir: str):
  """(module, variables, meta) of the teacher; trains it first if no checkpoint is given."""
  arch = config.teacher.arch
  if not arch:
    raise UserError(f"method {config.method!r} needs a teacher: set config.teacher.arch "
                    f"(valid models: {', '.join(models_lib.names())}).")
  if arch not in models_lib.names():
    raise UserError(f"unknown teacher model {arch!r} (config.teacher.arch); valid models: "
                    f"{', '.join(models_lib.names())}")
  path = config.teacher.checkpoint
  if not path:
    path = config.teacher.auto_workdir.format(dataset=dataset.name, arch=arch, workdir=workdir)
    if not ckpt_lib.is_model_dir(os.path.join(path, "model")):
      logging.info("config.teacher.checkpoint is empty: training the %s teacher on %s into %s "
                   "first (a later run reuses it).", arch, dataset.name, path)
      print(f"[kdjax] no teacher checkpoint given (config.teacher.checkpoint): training {arch} on "
            f"{dataset.name} into {path} first; later runs reuse it.", flush=True)
      train_and_evaluate(recipes.teacher_config(config), path)
  if path.endswith((".pth", ".pt", ".tar")):
    from kdjax import convert  # pylint: disable=import-outside-toplevel
    try:
      variables = convert.from_torch(path, arch, num_classes=dataset.num_classes)
    except (ValueError, ImportError) as e:
      raise ckpt_lib.CheckpointError(f"cannot use {path} as the {arch} teacher: {e}") from None
    meta = {"arch": arch, "num_classes": dataset.num_classes, "source": path}
  else:
    variables, meta = ckpt_lib.load_model(path)
  _check_teacher_meta(meta, arch, dataset, path)
  module = models_lib.get(arch, num_classes=dataset.num_classes, dtype=_dtype(config))
  return module, {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}, meta


def _check_teacher_meta(meta: dict, arch: str, dataset: data_lib.Dataset, path: str) -> None:
  """Refuses a teacher of another architecture, label space or input normalisation."""
  if meta.get("arch", arch) != arch:
    raise ckpt_lib.CheckpointError(
        f"teacher checkpoint {path} holds a {meta['arch']}, but config.teacher.arch is {arch}.")
  if meta.get("num_classes", dataset.num_classes) != dataset.num_classes:
    raise ckpt_lib.CheckpointError(
        f"teacher checkpoint {path} has {meta['num_classes']} classes, {dataset.name} has "
        f"{dataset.num_classes}.")
  if "mean" in meta and not np.allclose(meta["mean"], dataset.mean, atol=1e-3):
    raise ckpt_lib.CheckpointError(
        f"teacher checkpoint {path} was trained with input mean {meta['mean']}, but {dataset.name} "
        f"is normalised with {list(dataset.mean)}; a teacher must see the normalisation it was "
        "trained with.")


def _dtype(config: ml_collections.ConfigDict):
  """The compute dtype, or None for float32 (Flax's default)."""
  return jnp.bfloat16 if config.dtype == "bfloat16" else None


class _Checkpoints:
  """The resumable state (latest epoch) as one Orbax manager keeping one step."""

  def __init__(self, directory: str):
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    self._ocp = ocp
    self._mgr = ocp.CheckpointManager(
        os.path.abspath(directory), item_names=("state", "history"),
        options=ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(1), create=True))

  def latest_epoch(self) -> Optional[int]:
    return self._mgr.latest_step()

  def restore(self, target: TrainState) -> tuple[TrainState, dict]:
    step = self._mgr.latest_step()
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), target)
    restored = self._mgr.restore(step, args=self._ocp.args.Composite(
        state=self._ocp.args.StandardRestore(abstract), history=self._ocp.args.JsonRestore()))
    return restored["state"], restored["history"]

  def save(self, epoch: int, state: TrainState, history: dict) -> None:
    self._mgr.save(epoch, args=self._ocp.args.Composite(
        state=self._ocp.args.StandardSave(state), history=self._ocp.args.JsonSave(history)),
                   force=True)
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.close()


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
  evaluate: Callable    # (variables, images, labels) -> number correct
  lr_fn: optax.Schedule
  steps_per_epoch: int
  eval_batch_size: int
  data_key: jax.Array


def build(config: ml_collections.ConfigDict, dataset: data_lib.Dataset, mesh: jax.sharding.Mesh,
          teacher_model=None, teacher_vars=None) -> Run:
  """Initial state and jitted step/eval functions for `config` on `mesh` (state replicated, batch sharded)."""
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  method = methods_lib.get(config.method, config)
  model = models_lib.get(config.model, num_classes=dataset.num_classes, dtype=_dtype(config))
  num_train = dataset.train_images.shape[0]
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch == 0:
    raise UserError(f"config.batch_size={config.batch_size} exceeds the {num_train} training images.")
  lr_fn = create_learning_rate_fn(config, steps_per_epoch)
  tx = create_optimizer(config, lr_fn)

  init_key, data_key, aug_key = jax.random.split(jax.random.key(config.seed), 3)
  data_info = {"num_train": num_train, "num_classes": dataset.num_classes,
               "train_labels": dataset.train_labels}
  teacher_out_fn = None
  if teacher_model is not None:
    teacher_out_fn = functools.partial(teacher_model.apply, teacher_vars, train=False)
  state = jax.jit(functools.partial(create_train_state, model=model, method=method, tx=tx,
                                    image_shape=dataset.train_images.shape[1:],
                                    teacher_out_fn=teacher_out_fn, data_info=data_info),
                  out_shardings=replicated)(init_key)
  train_step = jax.jit(
      make_train_step(model, method, tx, lr_fn, teacher_model, batch_size=config.batch_size,
                      steps_per_epoch=steps_per_epoch, mean=dataset.mean, std=dataset.std,
                      crop_padding=config.data.crop_padding, flip=config.data.flip,
                      aug_key=aug_key, batch_sharding=batch_sharding),
      out_shardings=(replicated, replicated), donate_argnums=(0,))
  permute = jax.jit(lambda key: jax.random.permutation(key, num_train), out_shardings=replicated)
  num_devices = mesh.devices.size
  eval_bs = math.ceil(config.eval_batch_size / num_devices) * num_devices
  evaluate = jax.jit(make_eval_fn(model, eval_batch_size=eval_bs, mean=dataset.mean, std=dataset.std,
                                  batch_sharding=batch_sharding))
  return Run(state=state, train_step=train_step, permute=permute, evaluate=evaluate, lr_fn=lr_fn,
             steps_per_epoch=steps_per_epoch, eval_batch_size=eval_bs, data_key=data_key)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config.model` with `config.method`, evaluates every epoch, returns results.json."""
  t_start = time.time()
  workdir = os.path.abspath(workdir)
  results_path = os.path.join(workdir, "results.json")
  if os.path.exists(results_path):
    with open(results_path) as f:
      results = json.load(f)
    if results.get("epochs") == config.epochs:
      print(f"[kdjax] {workdir} already holds a finished run (results.json); nothing to do.")
      return results

  devices = jax.devices()
  _check_config(config, len(devices))
  method = methods_lib.get(config.method, config)
  dataset = data_lib.load(config.data.name, data_dir=config.data.data_dir or None,
                          download=config.data.download)
  os.makedirs(workdir, exist_ok=True)

  teacher_model = teacher_vars = None
  teacher_meta: dict = {}
  if method.needs_teacher:
    teacher_model, teacher_vars, teacher_meta = _load_teacher(config, dataset, workdir)
    t_start = time.time()  # a teacher trained on the way has its own results.json

  mesh = make_mesh(devices)
  replicated = NamedSharding(mesh, P())
  run = build(config, dataset, mesh, teacher_model, teacher_vars)
  state, steps_per_epoch = run.state, run.steps_per_epoch
  data_key = run.data_key

  checkpoints = _Checkpoints(os.path.join(workdir, "checkpoints"))
  history: dict[str, Any] = {"epochs": [], "best_top1": -1.0, "best_epoch": -1,
                             "train_seconds": 0.0, "train_images": 0, "wall_seconds": 0.0}
  if checkpoints.latest_epoch() is not None:
    state, history = checkpoints.restore(state)
    print(f"[kdjax] resumed from {workdir} after epoch {checkpoints.latest_epoch()}.", flush=True)
  start_epoch = len(history["epochs"])

  put = lambda a: jax.device_put(a, replicated)
  train_images, train_labels = put(dataset.train_images), put(dataset.train_labels.astype(np.int32))
  test_images_np, test_labels_np = _pad_to(dataset.test_images, dataset.test_labels.astype(np.int32),
                                           run.eval_batch_size)
  test_images, test_labels = put(test_images_np), put(test_labels_np)
  if teacher_vars is not None:
    teacher_vars = put(teacher_vars)
  train_step, permute, evaluate = run.train_step, run.permute, run.evaluate
  num_test = dataset.test_images.shape[0]

  def top1(variables) -> float:
    return 100.0 * int(evaluate(variables, test_images, test_labels)) / num_test

  if teacher_model is not None and "teacher_top1" not in history:
    eval_teacher = jax.jit(make_eval_fn(teacher_model, eval_batch_size=run.eval_batch_size,
                                        mean=dataset.mean, std=dataset.std,
                                        batch_sharding=NamedSharding(mesh, P("data"))))
    history["teacher_top1"] = 100.0 * int(eval_teacher(teacher_vars, test_images, test_labels)) / num_test
    print(f"[kdjax] teacher {config.teacher.arch}: test top-1 {history['teacher_top1']:.2f}%", flush=True)

  writer = _Writer(workdir)
  name = _run_name(config)
  try:
    for epoch in range(start_epoch, config.epochs):
      perm = permute(jax.random.fold_in(data_key, epoch))
      epoch_metrics, buffer = [], []
      bar = _progress_bar(config, steps_per_epoch, f"{name} epoch {epoch + 1}/{config.epochs}")
      t_epoch = t_interval = time.time()
      images_in_interval = 0
      for i in range(steps_per_epoch):
        state, metrics = train_step(state, teacher_vars, train_images, train_labels, perm)
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
      test_top1 = top1(variables)
      record = {"epoch": epoch + 1, "test_top1": test_top1, "seconds": time.time() - t_epoch}
      for k in epoch_metrics[0]:
        record[f"train_{k}"] = float(np.mean([m[k] for m in epoch_metrics]))
      history["epochs"].append(record)
      writer.scalars((epoch + 1) * steps_per_epoch, {"test/top1": test_top1})
      writer.epoch(record)
      if test_top1 > history["best_top1"]:
        history["best_top1"], history["best_epoch"] = test_top1, epoch + 1
        ckpt_lib.save_model(os.path.join(workdir, "best"), variables,
                            _model_meta(config, dataset, epoch + 1, test_top1))
      history["wall_seconds"] = history.get("wall_seconds", 0.0) + (time.time() - t_start)
      t_start = time.time()
      checkpoints.save(epoch + 1, state, history)
      print(f"[kdjax] {name} epoch {epoch + 1}/{config.epochs}: test top-1 {test_top1:.2f}% "
            f"(best {history['best_top1']:.2f}% at epoch {history['best_epoch']}), "
            f"train loss {record['train_loss']:.4f}", flush=True)
  finally:
    writer.close()
    checkpoints.close()

  variables = {"params": state.params["student"], "batch_stats": state.batch_stats}
  last_top1 = history["epochs"][-1]["test_top1"] if history["epochs"] else float("nan")
  ckpt_lib.save_model(os.path.join(workdir, "model"), variables,
                      _model_meta(config, dataset, config.epochs, last_top1))
  history["wall_seconds"] = history.get("wall_seconds", 0.0) + (time.time() - t_start)
  results = {
      "method": config.method, "teacher": config.teacher.arch or None, "student": config.model,
      "dataset": dataset.name, "epochs": config.epochs, "seed": config.seed,
      "best_top1": history["best_top1"], "best_epoch": history["best_epoch"],
      "last_top1": last_top1, "teacher_top1": history.get("teacher_top1"),
      "wall_seconds": history["wall_seconds"],
      "images_per_second": history["train_images"] / max(history["train_seconds"], 1e-9),
      "devices": f"{len(devices)} x {devices[0].device_kind}",
      "config": config.to_dict(),
  }
  if jax.process_index() == 0:
    with open(results_path + ".tmp", "w") as f:
      json.dump(results, f, indent=2, default=str)
    os.replace(results_path + ".tmp", results_path)
  return results


def _model_meta(config, dataset: data_lib.Dataset, epoch: int, top1: float) -> dict:
  """What a model directory records: enough to refuse it for the wrong use."""
  return {"arch": config.model, "num_classes": dataset.num_classes, "dataset": dataset.name,
          "mean": list(dataset.mean), "std": list(dataset.std), "epoch": epoch, "test_top1": top1,
          "method": config.method}


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
