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

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from kdjax.errors import UserError

MODEL_META = "meta.json"
MODEL_ITEMS = "variables"


class CheckpointError(UserError):
  """A checkpoint is missing, unfinished or does not fit the requested model."""


def save_model(path: str, variables: dict[str, Any], meta: dict[str, Any]) -> None:
  """Writes `variables` ({'params', 'batch_stats'}) and `meta` to the model directory `path`."""
  path = os.path.abspath(path)
  os.makedirs(path, exist_ok=True)
  variables = jax.tree.map(np.asarray, jax.device_get(variables))
  items = os.path.join(path, MODEL_ITEMS)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(items, variables, force=True)
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


class TrainStateCheckpoints:
  """The resumable state (latest epoch) as one Orbax manager keeping one step."""

  def __init__(self, directory: str):
    """Opens (or creates) the train-state directory `directory`."""
    self._mgr = ocp.CheckpointManager(
        os.path.abspath(directory), item_names=("state", "history"),
        options=ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(1), create=True))

  def latest_epoch(self) -> int | None:
    """The epoch of the saved state, or None when there is none."""
    return self._mgr.latest_step()

  def restore(self, target: Any) -> tuple[Any, dict]:
    """(state shaped and sharded like `target`, the run's history) of the latest epoch."""
    step = self._mgr.latest_step()
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), target)
    restored = self._mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()))
    return restored["state"], restored["history"]

  def save(self, epoch: int, state: Any, history: dict) -> None:
    """Writes `state` and `history` as epoch `epoch`, replacing the previous one, and waits."""
    self._mgr.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), history=ocp.args.JsonSave(history)),
                   force=True)
    self._mgr.wait_until_finished()

  def close(self) -> None:
    """Releases the Orbax manager."""
    self._mgr.close()
