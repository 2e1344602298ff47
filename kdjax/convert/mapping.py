"""PyTorch `state_dict` <-> Flax variables, by one generic rule on the key path (pure NumPy).

A torch key `a.b.c.<leaf>` addresses the Flax module at path ('a', 'b', 'c') (the model zoo names
its submodules after the PyTorch attributes, see `kdjax.models`):

| torch leaf        | Flax variable                  | layout change                              |
|-------------------|--------------------------------|--------------------------------------------|
| `weight` (conv)   | `params/.../kernel` (4-D)      | OIHW -> HWIO; grouped [O, I/g, kh, kw] ->  |
|                   |                                | [kh, kw, I/g, O] (the same transpose)      |
| `weight` (linear) | `params/.../kernel` (2-D)      | (out, in) -> (in, out)                     |
| `weight` (BN)     | `params/.../scale`             | -                                          |
| `bias`            | `params/.../bias`              | -                                          |
| `running_mean`    | `batch_stats/.../mean`         | -                                          |
| `running_var`     | `batch_stats/.../var`          | -                                          |
| `num_batches_tracked` | (ignored; optional in old checkpoints)                                  |

Whether a `weight` is a kernel or a BN scale is read from the Flax model's abstract variables,
which also validate the result: unknown keys, missing keys and shape mismatches are all collected
and reported together, by torch key name, in one `ValueError`.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

Path = tuple[str, ...]  # a Flax module path, e.g. ('layer1', '0', 'conv1')
Target = tuple[str, Path, str]  # (collection, module path, variable name)

_WRAPPER_KEYS = ("model", "state_dict")  # {"model": sd} (RepDistiller/mdistiller/torchdistill)
_DATA_PARALLEL_PREFIX = "module."
_BN_BUFFERS = {"running_mean": "mean", "running_var": "var"}
_IGNORED_LEAVES = ("num_batches_tracked",)
# Flax kernel axes, indexed by the torch axes: OIHW -> HWIO, (out, in) -> (in, out).
_TO_FLAX = {4: (2, 3, 1, 0), 2: (1, 0)}
_TO_TORCH = {4: (3, 2, 0, 1), 2: (1, 0)}


# ---------------------------------------------------------------------------------------------
# Checkpoint layouts


def unwrap_checkpoint(obj: Any) -> Mapping[str, Any]:
  """The state_dict inside a checkpoint: `obj["model"]` / `obj["state_dict"]` if present, else obj."""
  if not isinstance(obj, Mapping):
    raise ValueError(f"a checkpoint must be a dict, got {type(obj).__name__}")
  for key in _WRAPPER_KEYS:
    if isinstance(obj.get(key), Mapping):
      return obj[key]
  return obj


def normalize_keys(state_dict: Mapping[str, Any], submodule: str | None = None) -> dict[str, Any]:
  """Strips DataParallel `module.` prefixes; with `submodule` keeps only `<submodule>.*` (stripped)."""
  out: dict[str, Any] = {}
  for key, value in state_dict.items():
    if not isinstance(key, str):
      raise ValueError(f"state_dict keys must be strings, got {key!r}")
    name = key
    while name.startswith(_DATA_PARALLEL_PREFIX):
      name = name[len(_DATA_PARALLEL_PREFIX):]
    if submodule is not None:
      # mdistiller's distiller checkpoints hold `module.student.*`, `module.teacher.*` and the
      # method's extra modules side by side; the caller picks one network.
      if not name.startswith(submodule + "."):
        continue
      name = name[len(submodule) + 1:]
    if name in out:
      raise ValueError(f"state_dict key {name!r} appears twice (with and without a 'module.' prefix)")
    out[name] = value
  if submodule is not None and not out:
    raise ValueError(f"the state_dict has no keys under {submodule!r}.")
  return out


# ---------------------------------------------------------------------------------------------
# The model's abstract variables


@functools.lru_cache(maxsize=None)
def expected_variables(arch: str, num_classes: int) -> dict[Target, tuple[tuple[int, ...], np.dtype]]:
  """{(collection, module path, name): (shape, dtype)} of the Flax model, from `jax.eval_shape`."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from kdjax import models  # pylint: disable=import-outside-toplevel

  model = models.get(arch, num_classes=num_classes)
  found: dict[Target, tuple[tuple[int, ...], np.dtype]] = {}

  def init(inp: Any) -> None:
    # Read the structure while tracing: `init` returns the variables in creation order (which is
    # PyTorch's registration order), whereas eval_shape's output pytree would come back key-sorted.
    variables = model.init(jax.random.key(0), inp, train=False)
    found.update({t: (tuple(leaf.shape), np.dtype(leaf.dtype))
                  for t, leaf in flatten_variables(variables).items()})

  jax.eval_shape(init, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))  # CIFAR geometry
  return found


def flatten_variables(variables: Mapping[str, Any]) -> dict[Target, Any]:
  """{(collection, module path, name): leaf} for a nested {'params': ..., 'batch_stats': ...}."""
  flat: dict[Target, Any] = {}

  def walk(collection: str, path: Path, node: Any) -> None:
    for name, child in node.items():
      if isinstance(child, Mapping):
        walk(collection, path + (name,), child)
      else:
        flat[(collection, path, name)] = child

  for collection, tree in variables.items():
    walk(collection, (), tree)
  return flat


def unflatten_variables(flat: Mapping[Target, Any]) -> dict[str, Any]:
  """Inverse of `flatten_variables`: nested plain dicts."""
  out: dict[str, Any] = {}
  for (collection, path, name), leaf in flat.items():
    node = out.setdefault(collection, {})
    for part in path:
      node = node.setdefault(part, {})
    node[name] = leaf
  return out


# ---------------------------------------------------------------------------------------------
# Key rule


def torch_key(target: Target) -> str:
  """The torch state_dict key of a Flax variable (kernel and scale both map to `weight`)."""
  collection, path, name = target
  if collection == "batch_stats":
    leaf = {v: k for k, v in _BN_BUFFERS.items()}.get(name, name)
  else:
    leaf = {"kernel": "weight", "scale": "weight"}.get(name, name)
  return ".".join(path + (leaf,))


def flax_target(key: str, expected: Mapping[Target, Any]) -> Target | None:
  """Where torch `key` goes in the Flax model, or None when the model has no such variable."""
  *module, leaf = key.split(".")
  path = tuple(module)
  if leaf in _BN_BUFFERS:
    candidates = [("batch_stats", path, _BN_BUFFERS[leaf])]
  elif leaf == "weight":
    candidates = [("params", path, "kernel"), ("params", path, "scale")]
  else:
    candidates = [("params", path, leaf)]
  return next((c for c in candidates if c in expected), None)


def torch_shape(target: Target, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The torch shape of a Flax variable of shape `flax_shape`."""
  perm = _TO_TORCH.get(len(flax_shape)) if target[2] == "kernel" else None
  return tuple(flax_shape[i] for i in perm) if perm else tuple(flax_shape)


def to_flax_array(target: Target, array: np.ndarray) -> np.ndarray:
  """A torch tensor's values in Flax layout (kernels transposed, everything else as is)."""
  perm = _TO_FLAX.get(array.ndim) if target[2] == "kernel" else None
  return np.ascontiguousarray(np.transpose(array, perm)) if perm else array


def to_torch_array(target: Target, array: np.ndarray) -> np.ndarray:
  """A Flax variable's values in torch layout."""
  perm = _TO_TORCH.get(array.ndim) if target[2] == "kernel" else None
  return np.ascontiguousarray(np.transpose(array, perm)) if perm else array


# ---------------------------------------------------------------------------------------------
# Conversions


def _fmt_shape(shape: tuple[int, ...]) -> str:
  return "[" + ", ".join(str(d) for d in shape) + "]"


def _mismatch_error(arch: str, num_classes: int, unknown: list[str], missing: list[str],
                    wrong: list[str], hint: str = "") -> ValueError:
  """One error naming every offending key."""
  parts = []
  if unknown:
    parts.append(f"{len(unknown)} unknown key(s): {', '.join(unknown)}")
  if missing:
    parts.append(f"{len(missing)} missing key(s): {', '.join(missing)}")
  if wrong:
    parts.append(f"{len(wrong)} shape mismatch(es): {', '.join(wrong)}")
  # The hint goes first: the key lists can run to hundreds of names.
  return ValueError(f"the state_dict does not fit kdjax model {arch!r} (num_classes={num_classes})"
                    f"{hint}: " + "; ".join(parts))


def state_dict_to_variables(state_dict: Mapping[str, Any], arch: str, num_classes: int = 100,
                            submodule: str | None = None) -> dict[str, dict[str, Any]]:
  """A PyTorch state_dict (or `{"model": sd}`) of `arch` as Flax {'params', 'batch_stats'} (NumPy)."""
  sd = normalize_keys(unwrap_checkpoint(state_dict), submodule)
  expected = expected_variables(arch, num_classes)
  flat: dict[Target, np.ndarray] = {}
  unknown, wrong = [], []
  for key, value in sd.items():
    module, _, leaf = key.rpartition(".")
    if leaf in _IGNORED_LEAVES and ("batch_stats", tuple(module.split(".")), "mean") in expected:
      continue  # PyTorch's BN step counter: Flax has no such variable.
    target = flax_target(key, expected)
    if target is None:
      unknown.append(key)
      continue
    shape, dtype = expected[target]
    array = np.asarray(value)
    want = torch_shape(target, shape)
    if array.shape != want:
      wrong.append(f"{key}: checkpoint {_fmt_shape(array.shape)} vs model {_fmt_shape(want)}")
      continue
    # Always a copy: `tensor.numpy()` shares memory with the torch module, whose in-place
    # updates (train-mode running stats) must not leak into the Flax variables.
    flat[target] = np.array(to_flax_array(target, array), dtype=dtype, copy=True)
  missing = [torch_key(t) for t in expected if t not in flat and torch_key(t) not in sd]
  if unknown or missing or wrong:
    hint = ""
    if any(k.startswith(("student.", "teacher.")) for k in unknown):
      hint = (" (this looks like an mdistiller distiller checkpoint: pick one network with "
              "submodule='student' or 'teacher', CLI --submodule=student)")
    raise _mismatch_error(arch, num_classes, unknown, missing, wrong, hint)
  # In the model's own order (the order `init` creates the variables).
  return unflatten_variables({t: flat[t] for t in expected})


def _infer_num_classes(flat: Mapping[Target, Any]) -> int:
  """The output width of the model's only Dense layer (every zoo model has one classifier)."""
  dense = [np.shape(v)[1] for (c, _, n), v in flat.items() if c == "params" and n == "kernel"
           and len(np.shape(v)) == 2]
  if len(dense) != 1:
    raise ValueError(f"cannot infer num_classes: found {len(dense)} dense kernels; pass num_classes")
  return int(dense[0])


def check_variables(variables: Mapping[str, Any], arch: str, num_classes: int | None = None) -> None:
  """Raises a ValueError naming (by torch key) every variable that does not fit the Flax `arch`."""
  flat = flatten_variables({c: variables[c] for c in ("params", "batch_stats") if c in variables})
  num_classes = _infer_num_classes(flat) if num_classes is None else num_classes
  expected = expected_variables(arch, num_classes)
  unknown = [torch_key(t) for t in flat if t not in expected]
  missing = [torch_key(t) for t in expected if t not in flat]
  wrong = [f"{torch_key(t)}: variables {_fmt_shape(np.shape(v))} vs model "
           f"{_fmt_shape(expected[t][0])}" for t, v in flat.items()
           if t in expected and tuple(np.shape(v)) != expected[t][0]]
  if unknown or missing or wrong:
    raise _mismatch_error(arch, num_classes, unknown, missing, wrong)


def variables_to_state_dict(variables: Mapping[str, Any], arch: str | None = None,
                            num_classes: int | None = None) -> dict[str, np.ndarray]:
  """Flax {'params', 'batch_stats'} as a PyTorch-layout state_dict of NumPy arrays.

  With `arch` the variables are first checked against that model. Every BatchNorm (a module with
  batch_stats) gets a `num_batches_tracked` int64 0-d entry, as PyTorch's `state_dict` has.
  """
  flat = flatten_variables({c: variables[c] for c in ("params", "batch_stats") if c in variables})
  if arch is not None:
    check_variables(variables, arch, num_classes)
    # The model's creation order (a restored checkpoint's dicts may come back key-sorted).
    num_classes = _infer_num_classes(flat) if num_classes is None else num_classes
    flat = {t: flat[t] for t in expected_variables(arch, num_classes)}
  # Group by module, in first-appearance order, so each module's entries come out together in
  # PyTorch's order: weight, bias, running_mean, running_var, num_batches_tracked.
  order = {"kernel": 0, "scale": 0, "bias": 1, "mean": 2, "var": 3}
  modules: dict[Path, list[Target]] = {}
  for target in flat:
    modules.setdefault(target[1], []).append(target)
  sd: dict[str, np.ndarray] = {}
  for path, targets in modules.items():
    for target in sorted(targets, key=lambda t: (order.get(t[2], 9), t[2])):
      sd[torch_key(target)] = np.array(to_torch_array(target, np.asarray(flat[target])), copy=True)
    if any(t[0] == "batch_stats" for t in targets):
      sd[".".join(path + ("num_batches_tracked",))] = np.array(0, dtype=np.int64)
  return sd
