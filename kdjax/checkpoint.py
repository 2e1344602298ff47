"""Orbax checkpoints: the resumable train state, and exported model variables.

Two kinds of directory:

* a *train-state* directory (`workdir/checkpoints/{latest,best}`), one Orbax
  `CheckpointManager` each, keeping one step: everything needed to resume;
* a *model* directory (`workdir/model`, or what `python -m kdjax.convert` writes):
  the frozen `{'params', 'batch_stats'}` of one network plus `meta.json` (arch,
  num_classes, dataset, normalisation constants, top-1). This is what
  `config.teacher.checkpoint` points at.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from kdjax.errors import UserError

MODEL_META = "meta.json"
MODEL_ITEMS = "variables"
DIGEST = "digest"


class CheckpointError(UserError):
  """A checkpoint is missing, unfinished or does not fit the requested model."""


class DiskFullError(CheckpointError):
  """A save ran out of space. Orbax's writer threads are left failing, so the CLI ends the process
  at once after the message (`hard_exit`) instead of letting their shutdown tracebacks print."""
  hard_exit = True

  def __init__(self, message: str):
    super().__init__(message)
    # Their unretrieved futures would be reported when collected: nothing more to say about them.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def save_model(path: str, variables: dict[str, Any], meta: dict[str, Any]) -> None:
  """Writes `variables` ({'params', 'batch_stats'}) and `meta` to the model directory `path`."""
  path = os.path.abspath(path)
  os.makedirs(path, exist_ok=True)
  variables = jax.tree.map(np.asarray, jax.device_get(variables))
  items = os.path.join(path, MODEL_ITEMS)
  check_space(path, variables, "the model", "the run's checkpoints are intact")
  try:
    with _quiet_orbax_errors(), ocp.StandardCheckpointer() as ckptr:
      ckptr.save(items, variables, force=True)
  except Exception as e:  # pylint: disable=broad-except
    if not _disk_full(e):
      raise
    _remove_partial(path)
    raise DiskFullError(f"no space left on the device of {path} while exporting the model; the "
                          "run's checkpoints are intact. Free some space and rerun the same command "
                          "(it exports again from the last checkpoint).") from None
  # meta.json is written last, by one process: its presence marks a complete model directory.
  if jax.process_index() == 0:
    tmp = os.path.join(path, MODEL_META + ".tmp")
    with open(tmp, "w") as f:
      json.dump(meta, f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(path, MODEL_META))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(f"kdjax save_model {path}")


def is_model_dir(path: str) -> bool:
  """Whether `path` holds a complete exported model."""
  return os.path.isfile(os.path.join(path, MODEL_META))


def load_model(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a model directory (or a run workdir holding one in `model/`): (variables, meta)."""
  path = os.path.abspath(path)
  if not is_model_dir(path) and is_model_dir(os.path.join(path, "model")):
    path = os.path.join(path, "model")
  if not is_model_dir(path):
    raise CheckpointError(
        f"{path} holds no kdjax model (no {MODEL_META}). Point it at a finished kdjax run's "
        "workdir, at a directory written by `python -m kdjax.convert`, or at a PyTorch .pth file.")
  with open(os.path.join(path, MODEL_META)) as f:
    meta = json.load(f)
  with ocp.StandardCheckpointer() as ckptr:
    variables = ckptr.restore(os.path.join(path, MODEL_ITEMS))
  return variables, meta


def state_digest(state: Any) -> str:
  """SHA-256 over every leaf's path, dtype, shape and bytes (this process's copy of the replicated state)."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    if isinstance(leaf, jax.Array):
      if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
      leaf = leaf.addressable_data(0)  # replicated: every shard is the whole array
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()


class _DropOrbaxErrors(logging.Filter):
  """Drops the tracebacks Orbax's writer threads log for a failed save: the error reaches the caller,
  which says what happened in one line (or re-raises it)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and "orbax" in (record.pathname or ""))


@contextlib.contextmanager
def _quiet_orbax_errors():
  """For the block, Orbax's own error log lines are dropped (unless absl's --verbosity asks for debug)."""
  logger = logging.getLogger("absl")
  quiet = _DropOrbaxErrors()
  if logger.getEffectiveLevel() > logging.DEBUG:
    logger.addFilter(quiet)
  try:
    yield
  finally:
    logger.removeFilter(quiet)


def _nbytes(tree: Any) -> int:
  """Bytes of every array leaf of `tree` (PRNG keys as their key data)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    total += int(np.prod(np.shape(leaf))) * np.dtype(getattr(leaf, "dtype", np.float32)).itemsize
  return total


def check_space(directory: str, tree: Any, what: str, intact: str) -> None:
  """Refuses, before anything is written, a save of `tree` that the free space of `directory`
  cannot hold (Orbax writes uncompressed arrays; 2% + 256 KiB covers its metadata)."""
  need = int(_nbytes(tree) * 1.02) + (256 << 10)
  probe = directory
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  free = shutil.disk_usage(probe).free
  if free < need:
    raise DiskFullError(f"not enough space on the device of {directory} to save {what}: it needs about "
                        f"{need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free; {intact}. Free some "
                        "space and rerun the same command to resume.")


def _disk_full(error: BaseException) -> bool:
  """Whether `error` (or what caused it) is ENOSPC / EDQUOT, however Orbax wrapped it."""
  while error is not None:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def _remove_partial(directory: str) -> None:
  """Deletes the temporary directories of an unfinished Orbax save (the next save would trip over them)."""
  if jax.process_index() != 0 or not os.path.isdir(directory):
    return
  for name in os.listdir(directory):
    if ".orbax-checkpoint-tmp" in name:
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


class TrainStateCheckpoints:
  """The resumable state as one Orbax manager keeping the two latest steps, each with its digest.

  A step's number is the global train step it was taken at (an epoch boundary, or the step
  a preempted run stopped at); directories written before that numbered epochs, which
  orders them the same way. Restoring verifies the state against the digest saved with
  it; a damaged latest step is moved aside to `<directory>.damaged/` and the previous one
  restored, saying so.
  """

  def __init__(self, directory: str):
    """Opens (or creates) the train-state directory `directory`."""
    self.directory = os.path.abspath(directory)
    # A save killed mid-way (SIGKILL, power loss) leaves its temporary directory; it is not a
    # checkpoint, and the next save of that step would warn on stderr before replacing it.
    _remove_partial(self.directory)
    self._mgr = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory, item_names=("state", "history", DIGEST),
        options=ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(2), create=True))

  def latest_epoch(self) -> int | None:
    """The number of the latest saved step (a global train step), or None when there is none."""
    return self._mgr.latest_step()

  def _restore_step(self, step: int, abstract: Any) -> tuple[Any, dict]:
    """The verified (state, history) of `step`; raises CheckpointError saying what is wrong."""
    try:
      restored = self._mgr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  (Orbax/TensorStore raise many kinds)
      raise CheckpointError(f"it cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    state, history = restored["state"], restored["history"]
    if os.path.isdir(os.path.join(self.directory, str(step), DIGEST)):
      saved = self._mgr.restore(step, args=ocp.args.Composite(**{DIGEST: ocp.args.JsonRestore()}))[DIGEST]
      if saved.get("sha256") != state_digest(state):
        raise CheckpointError("its contents do not match the digest written with it (the files "
                              "changed after the save)")
    return state, history

  def restore(self, target: Any) -> tuple[Any, dict]:
    """(state shaped and sharded like `target`, the run's history) of the latest good step."""
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), target)
    steps = sorted(self._mgr.all_steps(), reverse=True)
    for k, step in enumerate(steps):
      try:
        restored = self._restore_step(step, abstract)
      except CheckpointError as e:
        if k + 1 < len(steps):
          self._set_aside(step)
          print(f"[kdjax] the checkpoint {self.directory}/{step} is damaged: {e}; moved it to "
                f"{self.directory}.damaged/{step} and resuming from the previous one ({steps[k + 1]}).",
                flush=True)
          continue
        raise CheckpointError(
            f"the checkpoint {self.directory}/{step} is damaged: {e}, and there is no earlier one. "
            f"Move {self.directory} aside to start this run again from scratch (or restore it from "
            "a backup); nothing was changed.") from None
      return restored
    raise CheckpointError(f"{self.directory} holds no checkpoint")

  def _set_aside(self, step: int) -> None:
    """Moves the damaged `step` out of the manager's directory (kept for inspection), and reopens it."""
    if jax.process_index() == 0:
      aside = self.directory + ".damaged"
      os.makedirs(aside, exist_ok=True)
      target = os.path.join(aside, str(step))
      if os.path.exists(target):
        shutil.rmtree(target)
      os.replace(os.path.join(self.directory, str(step)), target)
    self._mgr.close()
    self._mgr = self._open()

  def save(self, step: int, state: Any, history: dict) -> None:
    """Writes `state`, `history` and the state's digest as `step`, keeping the previous step, and waits."""
    digest = {"sha256": state_digest(state), "step": int(step)}
    previous = self._mgr.latest_step()
    check_space(self.directory, (state, history), f"step {step}",
                f"the previous checkpoint ({self.directory}/{previous}) is intact" if previous is not None
                else "no earlier checkpoint exists")
    try:
      with _quiet_orbax_errors():
        self._mgr.save(step, args=ocp.args.Composite(**{
          "state": ocp.args.StandardSave(state), "history": ocp.args.JsonSave(history),
            DIGEST: ocp.args.JsonSave(digest)}), force=True)
        self._mgr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if not _disk_full(e):
        raise
      _remove_partial(self.directory)
      previous = [s for s in self._mgr.all_steps() if s != step]
      kept = f"the previous checkpoint ({self.directory}/{max(previous)}) is intact" if previous else \
          "no earlier checkpoint exists"
      raise DiskFullError(f"no space left on the device of {self.directory} while saving step {step}; "
                            f"{kept}. Free some space and rerun the same command to resume.") from None

  def close(self) -> None:
    """Releases the Orbax manager."""
    self._mgr.close()
