"""Reading and writing PyTorch .pth files; the only place kdjax touches torch (imported lazily)."""
from __future__ import annotations

import argparse
import hashlib
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

_INSTALL_HINT = "pip install torch (CPU build is enough) to read .pth files"


def import_torch() -> Any:
  """Imports torch, or raises an ImportError that says how to get it."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"PyTorch is not installed: {_INSTALL_HINT}.") from e
  return torch


def _safe_globals() -> list[Any]:
  """The non-tensor types released checkpoints pickle (docs/protocol.md §5.3), allowed by name."""
  core = getattr(np, "_core", None) or np.core  # NumPy 2 renamed numpy.core to numpy._core
  scalar = core.multiarray.scalar
  dtype_classes = [c for c in vars(np.dtypes).values() if isinstance(c, type) and issubclass(c, np.dtype)]
  # Pickles name the scalar reconstructor after the NumPy that wrote them: allow both spellings.
  return [argparse.Namespace, np.dtype, *dtype_classes,
          (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]


def _to_numpy(value: Any, torch: Any) -> Any:
  """A CPU NumPy copy of a tensor (bfloat16 widened, which NumPy lacks); other values unchanged."""
  if isinstance(value, torch.Tensor):
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
      value = value.float()
    return value.numpy()
  return value


def load_pth(path: str) -> Any:
  """Unpickles a .pth with `weights_only=True` and a small allow-list; tensors become NumPy arrays."""
  torch = import_torch()
  try:
    with torch.serialization.safe_globals(_safe_globals()):
      obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    # torch's message is a multi-paragraph essay; the line naming the global is what matters.
    lines = [ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln]
    why = lines[0] if lines else str(e).splitlines()[0]
    raise ValueError(f"{path} cannot be read with torch.load(weights_only=True): {why} "
                     "(kdjax never unpickles arbitrary objects)") from None
  if isinstance(obj, Mapping):
    return {k: (dict((kk, _to_numpy(vv, torch)) for kk, vv in v.items()) if isinstance(v, Mapping)
                else _to_numpy(v, torch)) for k, v in obj.items()}
  return obj


def save_pth(state_dict: Mapping[str, Any], path: str, wrap: bool = True) -> None:
  """Writes `{"model": state_dict}` (the RepDistiller / mdistiller layout) as a .pth file; with
  `wrap=False`, `state_dict` is already `{entry: state_dict}` (several networks' parts)."""
  torch = import_torch()
  tensors = lambda sd: {k: torch.from_numpy(np.array(v, copy=True)) for k, v in sd.items()}
  torch.save({"model": tensors(state_dict)} if wrap else {k: tensors(v) for k, v in state_dict.items()}, path)


def sha256(path: str) -> str:
  """Hex SHA-256 of a file's bytes."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()
