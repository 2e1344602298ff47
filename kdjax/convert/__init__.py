"""PyTorch checkpoints <-> kdjax (Flax) variables.

* `from_torch(path, arch)`: a RepDistiller / mdistiller .pth (raw state_dict, `{"model": sd}` or
  `{"state_dict": sd}`, keys with or without DataParallel `module.` prefixes; an mdistiller distiller
  checkpoint `module.student.*` / `module.teacher.*` with `submodule='student'`) as
  `{'params', 'batch_stats'}`.
* `state_dict_to_variables` / `variables_to_state_dict`: the same on in-memory NumPy dicts.
* `to_torch(variables, path)`: writes `{"model": state_dict}`, loadable by the reference code's
  `model.load_state_dict(torch.load(path)["model"])`.
* `python -m kdjax.convert ...`: the command line (see `kdjax/convert/__main__.py`).

torch is needed only to read or write .pth files and is imported inside those functions, so
`import kdjax.convert` works without it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kdjax.convert.mapping import check_variables
from kdjax.convert.mapping import normalize_keys
from kdjax.convert.mapping import state_dict_to_variables
from kdjax.convert.mapping import unwrap_checkpoint
from kdjax.convert.mapping import variables_to_state_dict
from kdjax.convert import torch_io  # imports torch only inside its functions
from kdjax.convert.torch_io import sha256

__all__ = ["check_variables", "from_torch", "normalize_keys", "sha256", "state_dict_to_variables",
           "to_torch", "unwrap_checkpoint", "variables_to_state_dict"]


def from_torch(path: str, arch: str, num_classes: int = 100,
               submodule: str | None = None) -> dict[str, dict[str, Any]]:
  """Reads a PyTorch .pth of `arch` into Flax {'params', 'batch_stats'} (NumPy arrays)."""
  checkpoint = torch_io.load_pth(path)
  try:
    return state_dict_to_variables(checkpoint, arch, num_classes, submodule=submodule)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None


def to_torch(variables: Mapping[str, Any], path: str, arch: str | None = None,
             num_classes: int | None = None) -> str:
  """Writes Flax variables as a PyTorch .pth holding `{"model": state_dict}`; returns what it holds.

  A SimKD student (`simkd(...)`) is written as its release saves it, `{"model": the student's
  state_dict, "proj": the projector's (`transfer.*`)}`, plus `"cls_t"`, the teacher's classifier
  (`weight`, `bias`) it predicts through, which the release reads from the teacher instead.
  """
  sd = variables_to_state_dict(variables, arch, num_classes)
  if arch and arch.startswith("simkd("):
    part = lambda prefix: {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    torch_io.save_pth({"model": part("student."), "proj": {k: v for k, v in sd.items() if k.startswith("transfer.")},
                       "cls_t": part("cls_t.")}, path, wrap=False)
    return ("'model' (the student network), 'proj' (SimKD's projector, transfer.*) and 'cls_t' (the "
            "teacher's classifier the student predicts through)")
  torch_io.save_pth(sd, path)
  return "'model' (the network's state_dict)"
