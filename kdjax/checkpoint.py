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
