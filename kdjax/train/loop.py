"""The epoch loop of one phase, and the one writer its metrics go through.

`Fitter.fit` runs the remaining epochs of a phase (the main training or a
method's prestage) from a restored state: steps without host round-trips
(metrics are fetched once per `log_every_steps`), then evaluation, the metrics
writer, the best-model callback and the train-state checkpoint.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator, Optional

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from kdjax import checkpoint as ckpt_lib
from kdjax import data as data_lib
from kdjax.errors import UserError
from kdjax.train.step import TrainState


class NonFiniteLossError(UserError):
  """The loss or its gradient became NaN/inf; the run stopped without checkpointing it."""


class Interrupted(UserError):
  """SIGTERM/SIGINT stopped the run after a checkpoint of the step it had reached."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum  # the shell's convention for "ended by signal N"


class StopRequest:
  """Set by a SIGTERM/SIGINT handler; the loop polls it between steps."""

  def __init__(self):
    self.signum: Optional[int] = None


@contextlib.contextmanager
def stop_on_signals(request: StopRequest) -> Iterator[StopRequest]:
  """For the block, SIGTERM and SIGINT set `request` instead of killing; a second one acts as before."""
  if threading.current_thread() is not threading.main_thread():
    yield request  # only the main thread can take signals
    return
  watched = (signal.SIGTERM, signal.SIGINT)
  previous = {s: signal.getsignal(s) for s in watched}

  def handler(signum, frame):
    del frame
    request.signum = signum
    signal.signal(signum, previous[signum])  # a second signal: stop at once, as without kdjax

  for s in watched:
    signal.signal(s, handler)
  try:
    yield request
  finally:
    for s in watched:
      signal.signal(s, previous[s])


def _stop_agreed(request: StopRequest, boundary: bool) -> bool:
  """Whether to stop now: the local request alone, or, with several processes, any process's
  request at a logging boundary (they must all checkpoint the same step)."""
  if jax.process_count() == 1:
    return request.signum is not None
  if not boundary:
    return False
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  flags = multihost_utils.process_allgather(np.int32(request.signum or 0))
  signum = int(np.max(flags))
  if signum:
    request.signum = request.signum or signum
  return bool(signum)


def log(message: str) -> None:
  """Prints a progress line from process 0 only (every host runs the same loop)."""
  if jax.process_index() == 0:
    print(message, flush=True)


def new_history() -> dict[str, Any]:
  """The resumable record of a phase: per-epoch results, the best epoch, throughput counters."""
  return {"epochs": [], "best_top1": -1.0, "best_epoch": -1, "train_seconds": 0.0, "train_images": 0,
          "wall_seconds": 0.0}


def mean_metrics(buffer: list[dict]) -> dict[str, Any]:
  """Averages a list of per-step metric dicts fetched from the device in one transfer
  (a value per seed stays a list, one mean per seed)."""
  host = jax.device_get(buffer)
  return {k: np.mean(np.stack([np.asarray(m[k]) for m in host]), axis=0).tolist() for k in host[0]}


def model_view(tree: Any, k: int, seeds: int) -> Any:
  """Model `k`'s part of a tree: the tree itself for a single run (`seeds` = 0), else its row k
  of every array with a leading seed axis and of every list of per-seed values."""
  if not seeds:
    return tree
  # Values shared by the seeds (a summary's images_per_second) are scalars: kept as they are.
  pick = lambda a: a[k] if isinstance(a, list) or getattr(a, "ndim", 0) > 0 else a
  return jax.tree.map(pick, tree, is_leaf=lambda a: isinstance(a, list))


def raise_if_nonfinite(state: TrainState, config: ml_collections.ConfigDict) -> None:
  """Stops the run, before any checkpoint of the bad state, if a step was not finite (with
  several seeds: once every seed has diverged; a diverged seed alone is frozen by the step)."""
  bad = int(np.min(np.asarray(state.nonfinite_step)))
  if bad >= 0:
    raise NonFiniteLossError(
        f"the {config.method} loss (or its gradient) was not finite at step {bad}; the run stopped "
        "and wrote no checkpoint after it. Lower config.optim.lr, check the method's "
        "hyperparameters, or resume from the last checkpoint.")


def _summary_writer(logdir: str):
  """A tensorboardX SummaryWriter, imported without PyTorch.

  tensorboardX imports torch at import time when it is installed (to accept torch tensors,
  which kdjax never passes), and that costs 1-2 s at the start of every run in an
  environment that has torch, as a KD researcher's often does.
  """
  if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, tensorboardX's fallback
    try:
      import tensorboardX  # pylint: disable=import-outside-toplevel,unused-import
    finally:
      del sys.modules["torch"]
  from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  return SummaryWriter(logdir)


class Writer:
  """Where a phase's metrics go, from process 0 only: TensorBoard, metrics.jsonl, the progress bar."""

  def __init__(self, workdir: str, progress_bar: bool = False):
    self._on = jax.process_index() == 0
    self._bar_on = progress_bar and self._on
    self._bar = None
    if self._on:
      self._tb = _summary_writer(os.path.join(workdir, "tensorboard"))
      self._jsonl = os.path.join(workdir, "metrics.jsonl")

  def start_epoch(self, total: int, desc: str) -> None:
    """Opens the progress bar of an epoch of `total` steps (when enabled)."""
    if self._bar_on:
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      self._bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

  def train(self, step: int, steps_done: int, summary: dict[str, float]) -> None:
    """One logging interval's mean train metrics, ending at global step `step`."""
    if not self._on:
      return
    for k, v in summary.items():
      self._tb.add_scalar(f"train/{k}", v, step)
    if self._bar is not None:
      self._bar.update(steps_done)
      self._bar.set_postfix(loss=f"{summary['loss']:.3f}", acc=f"{summary['top1']:.1f}",
                            img_s=f"{summary['images_per_second']:.0f}")

  def epoch(self, step: int, record: dict, tops: list[float]) -> None:
    """An epoch's record (metrics.jsonl) and its test top-1 of the model and each member."""
    if not self._on:
      return
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    self._tb.add_scalar("test/top1", tops[0], step)
    for k, t in enumerate(tops[1:]):
      self._tb.add_scalar(f"test/member{k}_top1", t, step)
    with open(self._jsonl, "a") as f:
      f.write(json.dumps(record) + "\n")
    self._tb.flush()

  def sync(self, records: list[dict]) -> None:
    """Rewrites metrics.jsonl as the restored history's epochs, so that a resumed run's log holds
    each epoch once (a kill between the log line and the checkpoint left a line ahead)."""
    if not self._on:
      return
    tmp = self._jsonl + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, self._jsonl)

  def close(self) -> None:
    if self._on:
      if self._bar is not None:
        self._bar.close()
      self._tb.close()


class Fitter:
  """The epoch loop of one phase over the data of one run, resumable at any epoch."""

  def __init__(self, config, run, dataset: data_lib.Dataset, mesh, workdir: str, name: str):
    self.config, self.run, self.workdir, self.name = config, run, workdir, name
    self.dataset = dataset
    self.streaming = data_lib.is_streaming(dataset)
    replicated = NamedSharding(mesh, P())
    self.batch_sharding = NamedSharding(mesh, P("data"))
    put = lambda a: jax.device_put(a, replicated)
    self.teacher_vars = put(run.teacher_vars)
    if self.streaming:
      self.num_test = int(dataset.num_test)
      return
    # Resident data: the whole dataset on every device once; steps gather from it.
    self.train_images = put(dataset.train_images)
    self.train_labels = put(dataset.train_labels.astype(np.int32))
    test_images, test_labels = data_lib.pad_to(dataset.test_images, dataset.test_labels.astype(np.int32),
                                               run.eval_batch_size)
    self.test_images, self.test_labels = put(test_images), put(test_labels)
    self.num_test = dataset.test_images.shape[0]

  def _global(self, local: np.ndarray) -> jax.Array:
    """This process's rows of a batch -> the global batch array, sharded over every device."""
    global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
    return jax.make_array_from_process_local_data(self.batch_sharding, local, global_shape)

  def train_inputs(self, epoch: int, start: int = 0):
    """The (images, labels, perm-or-indices) arguments of each step of `epoch` from step `start`."""
    if not self.streaming:
      fold = jax.vmap(jax.random.fold_in, (0, None)) if self.run.seeds else jax.random.fold_in
      perm = self.run.permute(fold(self.run.data_key, epoch))  # per seed: its own data order
      for _ in range(start, self.run.steps_per_epoch):
        yield self.train_images, self.train_labels, perm
      return
    batches = self.dataset.train_batches(epoch=epoch, batch_size=self.config.batch_size,
                                         seed=self.config.seed, process_index=jax.process_index(),
                                         process_count=jax.process_count())
    # The order is a function of (seed, epoch): the skipped batches are the ones already trained on.
    for batch in itertools.islice(batches, start, self.run.steps_per_epoch):
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

  def model_top1s(self, state: TrainState) -> list[list[float]]:
    """Per model (the run, or each seed): the test top-1 of it and of each cohort member."""
    tops = self.top1(self.run.evaluate, self.run.deploy(state))
    n = max(self.run.seeds, 1)
    return [tops[k * len(tops) // n:(k + 1) * len(tops) // n] for k in range(n)]

  def fit(self, state: TrainState, history: dict, checkpoints: ckpt_lib.TrainStateCheckpoints,
          writers: list[Writer], on_epoch_end: Optional[Callable] = None,
          stop: Optional[StopRequest] = None) -> tuple[TrainState, dict]:
    """Runs the remaining epochs (from mid-epoch after a preemption); evaluates, logs and
    checkpoints after each. Once `stop` is set (SIGTERM/SIGINT; default: handlers for this
    call), it checkpoints the step reached and raises `Interrupted`.

    `writers` has one writer per model: the run's, or one per seed of a run of several seeds
    (`run.seeds`, their records in `history['seeds']`); `on_epoch_end(k, variables, epoch,
    top1)` fires when model k improves.
    """
    for h, w in zip(self._histories(history), writers, strict=True):
      w.sync(h["epochs"])
    if stop is not None:
      return self._fit(state, history, checkpoints, writers, on_epoch_end, stop)
    with stop_on_signals(StopRequest()) as request:
      return self._fit(state, history, checkpoints, writers, on_epoch_end, request)

  def _histories(self, history: dict) -> list[dict]:
    """The per-model histories: the run's own, or one per seed."""
    return history["seeds"] if self.run.seeds else [history]

  def _end_epoch(self, state, history, writers, on_epoch_end, epoch: int, epoch_metrics, seconds):
    """Evaluates every model, records and writes its epoch, and saves each improved one."""
    n, step = self.run.seeds, (epoch + 1) * self.run.steps_per_epoch
    all_tops = self.model_top1s(state)
    for k, (h, writer, tops) in enumerate(zip(self._histories(history), writers, all_tops)):
      record = {"epoch": epoch + 1, "test_top1": tops[0], "seconds": seconds}
      if len(tops) > 1:
        record["members_test_top1"] = tops[1:]
      for key in epoch_metrics[0]:
        record[f"train_{key}"] = float(np.mean([model_view(m, k, n)[key] for m in epoch_metrics]))
      h["epochs"].append(record)
      writer.epoch(step, record, tops)
      if tops[0] > h["best_top1"]:
        h["best_top1"], h["best_epoch"] = tops[0], epoch + 1
        if on_epoch_end is not None:
          on_epoch_end(k, model_view(self.run.deploy(state), k, n), epoch + 1, tops[0])
    if not n:
      record = history["epochs"][-1]
      return (f"test top-1 {record['test_top1']:.2f}% (best {history['best_top1']:.2f}% at epoch "
              f"{history['best_epoch']}), train loss {record['train_loss']:.4f}")
    top1 = [t[0] for t in all_tops]
    history["epochs"].append({"epoch": epoch + 1, "test_top1": top1, "seconds": seconds})
    return (f"test top-1 over {n} seeds {np.mean(top1):.2f}% ± {np.std(top1):.2f} "
            f"(per seed {', '.join(f'{t:.2f}' for t in top1)})")

  def _fit(self, state, history, checkpoints, writers, on_epoch_end, request):
    config, run = self.config, self.run
    steps_per_epoch = run.steps_per_epoch
    start_epoch = len(history["epochs"])
    # A preempted run stopped inside an epoch: its position and that epoch's metrics so far.
    position = history.pop("position", None) or {"steps": 0, "intervals": [], "buffer": []}
    t_start = time.time()
    first_interval = True  # includes compilation: kept out of the throughput
    for epoch in range(start_epoch, config.epochs):
      skip = position["steps"] if epoch == start_epoch else 0
      epoch_metrics = list(position["intervals"]) if epoch == start_epoch else []
      buffer = [_from_host(m) for m in position["buffer"]] if epoch == start_epoch else []
      for w in writers:
        w.start_epoch(steps_per_epoch, f"{self.name} epoch {epoch + 1}/{config.epochs}")
      t_epoch = t_interval = time.time()
      images_in_interval = 0
      for i, (images, labels, perm) in enumerate(self.train_inputs(epoch, skip), start=skip):
        state, metrics = run.train_step(state, self.teacher_vars, images, labels, perm)
        buffer.append(metrics)
        images_in_interval += config.batch_size * max(run.seeds, 1)
        boundary = len(buffer) == config.log_every_steps or i == steps_per_epoch - 1
        if boundary:
          summary = mean_metrics(buffer)  # waits for this interval's steps only
          self._check_finite(state, history)
          dt = time.time() - t_interval
          summary["images_per_second"] = images_in_interval / max(dt, 1e-9)
          if not first_interval:
            history["train_seconds"] += dt
            history["train_images"] += images_in_interval
          first_interval = False
          epoch_metrics.append(summary)
          for k, w in enumerate(writers):
            w.train(epoch * steps_per_epoch + i + 1, len(buffer), model_view(summary, k, run.seeds))
          buffer, t_interval, images_in_interval = [], time.time(), 0
        if i < steps_per_epoch - 1 and _stop_agreed(request, boundary):
          self._check_finite(state, history)
          history["position"] = {"steps": i + 1, "intervals": epoch_metrics,
                                 "buffer": [_to_host(m) for m in jax.device_get(buffer)]}
          history["wall_seconds"] = history.get("wall_seconds", 0.0) + (time.time() - t_start)
          checkpoints.save(epoch * steps_per_epoch + i + 1, state, history)
          raise self._interrupted(request.signum, f"after step {i + 1}/{steps_per_epoch} of epoch "
                                  f"{epoch + 1}/{config.epochs}", checkpoints)
      line = self._end_epoch(state, history, writers, on_epoch_end, epoch, epoch_metrics, time.time() - t_epoch)
      history["wall_seconds"] = history.get("wall_seconds", 0.0) + (time.time() - t_start)
      t_start = time.time()
      checkpoints.save((epoch + 1) * steps_per_epoch, state, history)
      log(f"[kdjax] {self.name} epoch {epoch + 1}/{config.epochs}: {line}")
      if epoch + 1 < config.epochs and _stop_agreed(request, True):
        raise self._interrupted(request.signum, f"at the end of epoch {epoch + 1}/{config.epochs}",
                                checkpoints)
    return state, history

  def _check_finite(self, state: TrainState, history: dict) -> None:
    """Stops the run if every model diverged; a seed that diverged alone is frozen (by the
    step) and reported once."""
    raise_if_nonfinite(state, self.config)
    if not self.run.seeds:
      return
    # raise_if_nonfinite fetched the same small array; the second read comes from the host copy.
    for h, bad in zip(history["seeds"], np.asarray(state.nonfinite_step).tolist()):
      if bad >= 0 and "diverged_at_step" not in h:
        h["diverged_at_step"] = bad
        log(f"[kdjax] {self.name}: seed {h['seed']} diverged (non-finite loss or gradient) at step "
            f"{bad}; it is frozen at its last finite state, the other seeds go on.")

  def _interrupted(self, signum: int, where: str, checkpoints: ckpt_lib.TrainStateCheckpoints) -> Interrupted:
    name = signal.Signals(signum).name
    return Interrupted(f"{name}: stopped {self.name} {where}; saved the checkpoint "
                       f"{checkpoints.directory}/{checkpoints.latest_epoch()}. Rerun the same command "
                       "to resume from exactly there.", signum)


def _to_host(metrics: dict) -> dict:
  """One step's fetched metrics as JSON: [value, dtype] per key (restored bit for bit; a value
  per seed is a list)."""
  return {k: [np.asarray(v).tolist(), str(np.asarray(v).dtype)] for k, v in metrics.items()}


def _from_host(metrics: dict) -> dict:
  return {k: np.asarray(v, dtype=dtype) for k, (v, dtype) in metrics.items()}
