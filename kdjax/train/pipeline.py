"""The phases of a run: teachers -> prestage -> main training -> export.

`train_and_evaluate` runs what `plan` lists (each teacher that must be trained
first, then the run itself); one run loads its data and teachers, runs the
method's prestage if it has one, the resumable main training, and exports the
student (and each cohort member) as model directories plus `results.json`.
`build` assembles the jitted pieces of one phase over a 1-D device mesh: state,
teacher and resident dataset replicated, batch sharded on its leading axis, so
BatchNorm statistics are over the global batch as on the references' one GPU.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import math
import os
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from kdjax import checkpoint as ckpt_lib
from kdjax import cpu as cpu_lib
from kdjax import data as data_lib
from kdjax import methods as methods_lib
from kdjax import models as models_lib
from kdjax.errors import UserError
from kdjax.train import export as export_lib
from kdjax.train import loop, optim, step as step_lib
from kdjax.train import seeds as seeds_lib
from kdjax.train import teachers as teachers_lib
from kdjax.train import workdir as workdir_lib


def check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Rejects configs that cannot run, with the fix in the message."""
  if not models_lib.exists(config.model):
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
  method = methods_lib.get(config.method, config)
  if config.teacher.recipe != "vanilla" and not method.needs_teacher:
    raise UserError(f"config.teacher.recipe={config.teacher.recipe!r} trains a teacher, but method "
                    f"{config.method!r} does not distill from one; pick a method that does (kd, dkd, "
                    "reviewkd, fitnet, ...) or leave teacher.recipe 'vanilla'.")
  if config.dtype not in ("float32", "bfloat16"):
    raise UserError(f"config.dtype={config.dtype!r}; valid: 'float32', 'bfloat16'.")
  seeds_lib.check(config, method, data_lib.streams(config.data.name))


def run_name(config: ml_collections.ConfigDict) -> str:
  """`<method>_<teacher>_<student>` (or `<method>_<student>` without a teacher)."""
  parts = [config.method] + ([config.teacher.arch] if config.teacher.arch else []) + [config.model]
  return "_".join(parts)


def default_workdir(config: ml_collections.ConfigDict) -> str:
  """`runs/<method>_<teacher>_<student>`, the CLI's workdir when none is given."""
  return os.path.join("runs", run_name(config))


def make_mesh(devices: list) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over `devices`."""
  return jax.make_mesh((len(devices),), ("data",), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def load_dataset(config: ml_collections.ConfigDict) -> data_lib.Dataset:
  """The run's dataset, resized at load time when `config.data.image_size` asks for it."""
  kwargs = {"data_dir": config.data.data_dir or None, "download": config.data.download}
  if config.data.manual_dir:
    kwargs["manual_dir"] = config.data.manual_dir
  if config.data.unlabelled:
    kwargs["unlabelled"] = True
  if config.data.image_size:
    kwargs["image_size"] = config.data.image_size
  return data_lib.load(config.data.name, **kwargs)


@dataclasses.dataclass(frozen=True)
class Run:
  """The compiled pieces of one phase, built by `build`."""
  state: step_lib.TrainState
  train_step: Callable  # (state, teacher_vars, images, labels, perm) -> (state, metrics)
  permute: Callable     # key -> permutation of the training set
  evaluate: Callable    # (variables, images, labels) -> correct counts [model, members...]
  lr_fn: optax.Schedule
  steps_per_epoch: int
  eval_batch_size: int
  data_key: jax.Array
  tx: tuple             # one optimizer per pass
  teacher_vars: tuple   # one variables tree per teacher: the step's second argument
  seeds: int = 0        # 0: one model; N: N seeds' states stacked on a leading axis
  arch: str = ""        # the network evaluated and exported: config.model, or the method's deployed one
  deploy: Callable = step_lib.student_variables  # TrainState -> that network's variables


def build(config: ml_collections.ConfigDict, dataset: data_lib.Dataset, mesh: jax.sharding.Mesh,
          teachers: Sequence[teachers_lib.Teacher] = (), *,
          method: Optional[methods_lib.Method] = None) -> Run:
  """Initial state and jitted step/eval functions for `config` on `mesh` (state replicated, batch sharded).

  `teachers` are the run's loaded teachers (`teachers.load_teachers`); the method sees
  their outputs as a list when `config.teachers` names an ensemble.
  """
  replicated = NamedSharding(mesh, P())
  platform = mesh.devices.flat[0].platform
  batch_sharding = NamedSharding(mesh, P("data"))
  method = method or methods_lib.get(config.method, config)
  model = models_lib.get(config.model, num_classes=dataset.num_classes,
                         dtype=models_lib.compute_dtype(config.dtype))
  streaming = data_lib.is_streaming(dataset)
  num_train = data_lib.num_train(dataset)
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch == 0:
    raise UserError(f"config.batch_size={config.batch_size} exceeds the {num_train} training images.")
  tx, lr_fn = optim.create_optimizers(config, method, steps_per_epoch)

  seeds = seeds_lib.parse(config)  # () for one run; else each seed's keys are its single run's
  init_key, data_key, aug_key = (seeds_lib.keys(seeds) if seeds
                                 else jax.random.split(jax.random.key(config.seed), 3))
  teachers = tuple(teachers)
  teacher_vars = tuple(t.variables for t in teachers)
  ensemble = teachers_lib.is_ensemble(config)
  data_info = {"num_train": num_train, "num_classes": dataset.num_classes,
               "train_labels": None if streaming else dataset.train_labels,
               "teacher_variables": teacher_vars[0] if method.needs_teacher_variables and teachers else None}
  teacher_out_fn = None
  if teachers:
    forward = teachers_lib.make_teacher_forward(teachers, mean=dataset.mean, std=dataset.std,
                                                bn_mode="eval", ensemble=ensemble)
    teacher_out_fn = lambda x: forward(teacher_vars, x, jax.random.key(0))
  init = functools.partial(step_lib.create_train_state, model=model, method=method, txs=tx,
                           image_shape=data_lib.image_shape(dataset), teacher_out_fn=teacher_out_fn,
                           data_info=data_info)
  state = jax.jit(jax.vmap(init) if seeds else init, out_shardings=replicated)(init_key)
  spec = step_lib.step_spec(model, method, tx, lr_fn, teachers, ensemble=ensemble, batch_size=config.batch_size,
                            steps_per_epoch=steps_per_epoch, mean=dataset.mean, std=dataset.std,
                            crop_padding=config.data.crop_padding, flip=config.data.flip,
                            aug_key=aug_key[0] if seeds else aug_key, batch_sharding=batch_sharding,
                            teacher_bn_mode=method.teacher_bn_mode, views=method.views, streaming=streaming,
                            teacher_first=platform == "cpu")
  arch, deploy = _deployed(config, method, model, data_lib.image_shape(dataset), teacher_out_fn)
  mode = seeds_lib.map_mode(config, platform) if seeds else ""
  step_fn = (functools.partial(seeds_lib.train_step, spec=spec, aug_keys=aug_key, mode=mode) if seeds
             else functools.partial(step_lib.train_step, spec=spec))
  train_step = jax.jit(step_fn, out_shardings=(replicated, replicated), donate_argnums=(0,),
                       compiler_options=cpu_lib.compiler_options(platform, dtype=config.dtype))
  permute_one = lambda key: jax.random.permutation(key, num_train)
  permute = jax.jit(jax.vmap(permute_one) if seeds else permute_one, out_shardings=replicated)
  num_devices = mesh.devices.size
  eval_bs = math.ceil(config.eval_batch_size / num_devices) * num_devices
  eval_model = model if arch == config.model else models_lib.get(
      arch, num_classes=dataset.num_classes, dtype=models_lib.compute_dtype(config.dtype))
  eval_spec = step_lib.EvalSpec(eval_model, eval_bs, dataset.mean, dataset.std, batch_sharding, streaming)
  evaluate = jax.jit(functools.partial(seeds_lib.evaluate, spec=eval_spec, mode=mode) if seeds
                     else functools.partial(step_lib.evaluate, spec=eval_spec))
  return Run(state=state, train_step=train_step, permute=permute, evaluate=evaluate, lr_fn=lr_fn,
             steps_per_epoch=steps_per_epoch, eval_batch_size=eval_bs, data_key=data_key, tx=tx,
             teacher_vars=teacher_vars, seeds=len(seeds), arch=arch, deploy=deploy)


def _deployed(config, method: methods_lib.Method, model, image_shape, teacher_out_fn) -> tuple[str, Callable]:
  """(the network the student is at test time, TrainState -> its variables)."""
  if method.deployed is None:
    return config.model, step_lib.student_variables
  x = jnp.zeros((2, *image_shape), jnp.float32)
  student_out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, train=False)[0])
  teacher_out = jax.eval_shape(teacher_out_fn, x) if teacher_out_fn is not None else None
  deployed = method.deployed
  return (deployed.arch(config.model, student_out, teacher_out),
          lambda state: deployed.variables(step_lib.student_variables(state), state.params["method"],
                                           state.method_state))


def plan(config: ml_collections.ConfigDict, workdir: str) -> list[tuple[ml_collections.ConfigDict, str]]:
  """The runs `train_and_evaluate` makes, in order: each teacher to train first, then `config`."""
  runs = []
  if methods_lib.get(config.method, config).needs_teacher:
    streaming = data_lib.streams(config.data.name)
    for teacher_config, path in teachers_lib.pending(config, config.data.name, workdir, streaming):
      runs += plan(teacher_config, path)
  return runs + [(config, workdir)]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       accept_config_change: bool = False) -> dict[str, Any]:
  """Trains `config.model` with `config.method` (its missing teachers first); returns results.json.

  A workdir started with another config is refused (`workdir.check_config`) unless
  `accept_config_change`. SIGTERM/SIGINT (preemption, Ctrl-C) stop the run at the end of the
  step in flight with a checkpoint of it (`loop.Interrupted`); rerunning resumes there.
  """
  workdir = os.path.abspath(workdir)
  try:
    with loop.stop_on_signals(loop.StopRequest()) as stop:
      return _train_all(config, workdir, accept_config_change, stop)
  except OSError as e:
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
      raise
    raise ckpt_lib.DiskFullError(f"no space left on the device of {e.filename or workdir}; the last "
                                 "checkpoint is intact. Free some space and rerun the same command to "
                                 "resume.") from None


def _train_all(config: ml_collections.ConfigDict, workdir: str, accept_config_change: bool,
               stop: loop.StopRequest) -> dict[str, Any]:
  """`train_and_evaluate` with the signal handlers in place."""
  if _finished(config, workdir) is None:
    check_config(config, jax.device_count())  # before any teacher trains for a run that cannot start
  runs = plan(config, workdir) if _finished(config, workdir) is None else [(config, workdir)]
  for teacher_config, path in runs[:-1]:
    logging.info("no teacher checkpoint given: training the %s teacher into %s first (a later run "
                 "reuses it).", teacher_config.model, path)
    loop.log(f"[kdjax] no teacher checkpoint given (config.teacher.checkpoint): training "
             f"{teacher_config.model} on {teacher_config.data.name} into {path} first; later runs reuse it.")
    _train_one(teacher_config, path, stop=stop)
  return _train_one(config, workdir, accept_config_change, stop=stop)


def _finished(config: ml_collections.ConfigDict, workdir: str) -> Optional[dict[str, Any]]:
  """The results of a finished run of `config.epochs` in `workdir`, else None."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    results = json.load(f)
  return results if results.get("epochs") == config.epochs else None


def _run_prestage(config, method: methods_lib.Method, dataset, mesh, workdir: str,
                  teachers: list[teachers_lib.Teacher], stop: loop.StopRequest) -> step_lib.TrainState:
  """Runs (or resumes, or reuses) the method's prestage under `<workdir>/prestage`; its final state."""
  prestage = method.prestage
  update = prestage.update
  pre_method = dataclasses.replace(method, loss=update.loss, trains=update.trains,
                                   optimizer=update.optimizer, extra_updates=(), prestage=None)
  pre_config = ml_collections.ConfigDict(config.to_dict())
  pre_config.epochs = prestage.epochs
  run = build(pre_config, dataset, mesh, teachers, method=pre_method)
  directory = os.path.join(workdir, "prestage")
  checkpoints = ckpt_lib.TrainStateCheckpoints(os.path.join(directory, "checkpoints"))
  state, history = run.state, loop.new_history()
  if checkpoints.latest_epoch() is not None:
    state, history = checkpoints.restore(state)
  if len(history["epochs"]) < prestage.epochs:
    loop.log(f"[kdjax] {config.method}: prestage of {prestage.epochs} epoch(s) into {directory}")
  writer = loop.Writer(directory, config.progress_bar)
  try:
    fitter = loop.Fitter(pre_config, run, dataset, mesh, directory, f"{config.method} prestage")
    state, _ = fitter.fit(state, history, checkpoints, [writer], stop=stop)
  finally:
    writer.close()
    checkpoints.close()
  return state


def _teacher_top1(fitter: loop.Fitter, run: Run, mesh, dataset, teachers) -> list[float]:
  """Test top-1 of each teacher trained on this dataset (others have none on this test set)."""
  tops = []
  for t in teachers:
    if t.input is not None or t.meta.get("dataset", dataset.name) != dataset.name:
      continue
    evaluate = jax.jit(step_lib.make_eval_fn(t.module, eval_batch_size=run.eval_batch_size,
                                             mean=dataset.mean, std=dataset.std,
                                             batch_sharding=NamedSharding(mesh, P("data"))))
    tops.append(fitter.top1(evaluate, jax.device_put(t.variables, NamedSharding(mesh, P())))[0])
  return tops


def _train_one(config: ml_collections.ConfigDict, workdir: str, accept_config_change: bool = False,
               *, stop: loop.StopRequest) -> dict[str, Any]:
  """One run whose teachers exist: prestage, resumable main training, export, results.json."""
  workdir_lib.prepare(workdir)
  # Process 0 speaks for the run: the other hosts of a multi-host run share its workdir.
  with workdir_lib.hold(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
    if jax.process_index() == 0:
      workdir_lib.check_config(workdir, config, accept_config_change)
    return _train_held(config, workdir, stop)


def _train_held(config: ml_collections.ConfigDict, workdir: str, stop: loop.StopRequest) -> dict[str, Any]:
  """`_train_one` once the workdir is held and its config checked."""
  done = _finished(config, workdir)
  if done is not None:
    loop.log(f"[kdjax] {workdir} already holds a finished run (results.json); nothing to do.")
    return done
  devices = jax.devices()
  check_config(config, len(devices))
  method = methods_lib.get(config.method, config)
  dataset = load_dataset(config)
  teachers = teachers_lib.load_teachers(config, dataset, workdir, method) if method.needs_teacher else []
  t_start = time.time()  # a teacher trained on the way has its own results.json

  mesh = make_mesh(devices)
  checkpoints = ckpt_lib.TrainStateCheckpoints(os.path.join(workdir, "checkpoints"))
  prestaged = None
  if method.prestage is not None and checkpoints.latest_epoch() is None:
    prestaged = _run_prestage(config, method, dataset, mesh, workdir, teachers, stop)
  run = build(config, dataset, mesh, teachers, method=method)
  state = run.state
  if prestaged is not None:
    # The main training starts from the prestage's parameters with a fresh optimizer.
    state = state.replace(params=prestaged.params, batch_stats=prestaged.batch_stats,
                          method_state=prestaged.method_state,
                          opt_state=jax.jit(functools.partial(optim.init_opt_state, run.tx))(prestaged.params))
  seeds = seeds_lib.parse(config)
  history = seeds_lib.new_history(seeds) if seeds else loop.new_history()
  if checkpoints.latest_epoch() is not None:
    state, history = checkpoints.restore(state)
    steps = history.get("position", {}).get("steps", 0)
    loop.log(f"[kdjax] resumed from {workdir} after epoch {len(history['epochs'])}"
             + (f" and {steps} steps of the next." if steps else "."))

  fitter = loop.Fitter(config, run, dataset, mesh, workdir, run_name(config))
  if teachers and "teacher_top1" not in history:
    tops = _teacher_top1(fitter, run, mesh, dataset, teachers)
    if tops:
      history["teacher_top1"] = tops[0] if len(tops) == 1 else tops
      loop.log(f"[kdjax] teacher(s) {config.teacher.arch or ','.join(config.teachers)}: test top-1 {tops}")

  # One directory per model: the workdir itself, or seed<k>/ for each seed.
  dirs = [seeds_lib.seed_dir(workdir, s) for s in seeds] or [workdir]
  metas = [seeds_lib.seed_config(config, s) for s in seeds] or [config]

  def save_best(k, variables, epoch, top1):
    ckpt_lib.save_model(os.path.join(dirs[k], "best"), variables,
                        export_lib.model_meta(metas[k], dataset, epoch, top1, arch=run.arch))

  writers = [loop.Writer(d, config.progress_bar and k == 0) for k, d in enumerate(dirs)]
  history["wall_seconds"] = history.get("wall_seconds", 0.0) + (time.time() - t_start)
  try:
    state, history = fitter.fit(state, history, checkpoints, writers, on_epoch_end=save_best, stop=stop)
  finally:
    for w in writers:
      w.close()
    checkpoints.close()
  t_start = time.time()
  if seeds:
    return seeds_lib.export(config, dataset, workdir, run.deploy(state), history, devices, t_start, arch=run.arch)
  return export_lib.run(config, dataset, workdir, run.deploy(state), history, devices, t_start, arch=run.arch)
