"""The workdir's own checks: that it is a usable directory, and that a resume is the same run.

A run holds an advisory lock on its workdir while it trains (released by the kernel however
the process ends, so a killed run never blocks its resume). A run records the config it was started with (`run_config.json`) before it trains. A
later run on the same workdir compares its config with the record, field by field, on
what alters the result; a difference is refused with the list of fields unless the user
accepts it (`--accept_config_change`), which rewrites the record.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from typing import Any, Iterator

import ml_collections

from kdjax import methods as methods_lib
from kdjax.errors import UserError

RECORD = "run_config.json"
LOCK = ".kdjax.lock"
# Fields that never change what a run computes: logging, where data and teachers are found,
# the eval batching, and the length (the schedule's milestones are fixed, so training longer
# continues the same trajectory).
RESULT_NEUTRAL = ("log_every_steps", "progress_bar", "eval_batch_size", "epochs", "data.data_dir",
                  "data.download", "data.manual_dir", "teacher.auto_workdir")
_MAX_LISTED = 12


def prepare(workdir: str) -> None:
  """Creates `workdir` (and checks it is writable), or says why it cannot be used."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir} is an existing file, not a directory; give a directory "
                    "(it is created if missing).")
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".kdjax_write_test_{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"cannot write to --workdir={workdir}: {e.strerror or e}; pick a writable "
                    "directory with free space.") from None


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{'optim.lr': 0.05, ...} with JSON-normalised values (tuples as lists)."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flat(value, name + "."))
    else:
      out[name] = json.loads(json.dumps(value, default=str))
  return out


def _upgrade(flat: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
  """A record written before fields moved (`defaults.MOVED`), in today's names (`now`'s keys)."""
  flat = dict(flat)
  flat.pop("data.views", None)  # now the method's own (KDCL: the cohort's size, pinned by `model`)
  bn_mode = flat.pop("teacher.bn_mode", None)
  moved_to = f"{flat.get('method')}.teacher_bn_mode"
  if bn_mode is not None and moved_to in now and moved_to not in flat:
    flat[moved_to] = bn_mode
  # A method field added since the record was written (e.g. kd.logit_standardization) at its
  # default is what the run computed then: a default never changes what existed before it.
  defaults = _flat(methods_lib.registry.defaults())
  for key, value in now.items():
    if key not in flat and key in defaults and defaults[key] == value:
      flat[key] = value
  return flat


def _relevant(flat: dict[str, Any], needs_teacher: bool) -> dict[str, Any]:
  """The fields that alter this run's result: not the neutral ones, not other methods' nodes,
  and no teacher fields for a method without a teacher."""
  method = flat.get("method")
  others = set(methods_lib.names()) - {method}
  keep = {}
  for key, value in flat.items():
    node = key.split(".")[0]
    if key in RESULT_NEUTRAL or node in others:
      continue
    if not needs_teacher and (node in ("teacher", "teachers")):
      continue
    keep[key] = value
  return keep


def check_config(workdir: str, config: ml_collections.ConfigDict, accept_change: bool = False) -> None:
  """Records `config` in a new workdir; in a used one, refuses a config that would change the run."""
  path = os.path.join(workdir, RECORD)
  current = config.to_dict()
  if os.path.exists(path):
    try:
      with open(path) as f:
        started = json.load(f)
    except (OSError, ValueError):
      started = None  # an unreadable record (a kill while writing it): rewrite it below
    if started is not None:
      # The run's own method decides whether teacher fields matter (a changed method differs anyway).
      needs_teacher = methods_lib.get(config.method, config).needs_teacher
      now = _relevant(_flat(current), needs_teacher)
      before = _relevant(_upgrade(_flat(started), now), needs_teacher)
      changed = sorted(k for k in set(before) | set(now) if before.get(k, "<absent>") != now.get(k, "<absent>"))
      if changed and not accept_change:
        listed = [f"  {k}: {before.get(k, '<absent>')!r} when started, {now.get(k, '<absent>')!r} now"
                  for k in changed[:_MAX_LISTED]]
        more = [f"  ... and {len(changed) - _MAX_LISTED} more"] if len(changed) > _MAX_LISTED else []
        raise UserError("\n".join([
            f"{workdir} holds a run started with another config; resuming would mix the two:",
            *listed, *more,
            "Use a new --workdir for the new config, or pass --accept_config_change to continue this "
            "run with the new values from the resumed epoch on."]))
      if not changed:
        return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(current, f, indent=2, default=str)
  os.replace(tmp, path)


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds the workdir's lock for the block; refuses a workdir another live run holds."""
  path = os.path.join(workdir, LOCK)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
      raise UserError(f"{workdir} is in use by {holder}, which is still running; wait for it to "
                      "finish, stop it, or use another --workdir.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # closing releases the lock
