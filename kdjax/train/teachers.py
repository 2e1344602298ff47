"""Teachers: which ones a run names, where each lives, loading, and their forward pass.

A run's teachers are always a sequence of `Teacher` values (`config.teachers`, else
the one `config.teacher`). Training a missing teacher is a phase of the pipeline
(`pending` lists them), so loading here never trains anything.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kdjax import checkpoint as ckpt_lib
from kdjax import data as data_lib
from kdjax import models as models_lib
from kdjax import recipes
from kdjax.errors import UserError
from kdjax.methods import base as methods_base

PyTree = Any


@dataclasses.dataclass(frozen=True)
class TeacherInput:
  """How the student's normalised batch becomes the input of a teacher trained on other data."""
  mean: tuple[float, ...]
  std: tuple[float, ...]
  image_size: int  # 0: the student's size


@dataclasses.dataclass(frozen=True)
class Spec:
  """One teacher a config names: its architecture, checkpoint ('' = train it) and index."""
  arch: str
  checkpoint: str
  index: int


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A loaded teacher: its module, frozen variables, checkpoint meta and input adapter."""
  module: Any
  variables: PyTree
  meta: dict = dataclasses.field(default_factory=dict)
  input: Optional[TeacherInput] = None  # None: the student's own data


def specs(config: ml_collections.ConfigDict) -> list[Spec]:
  """The teachers `config` names: `config.teachers`, else `config.teacher`."""
  if not config.teachers:
    return [Spec(config.teacher.arch, config.teacher.checkpoint, 0)]
  # `--config.teachers=a,b` arrives as one string: split it.
  entries = [e for item in config.teachers for e in str(item).split(",") if e.strip()]
  out = []
  for i, entry in enumerate(entries):
    arch, _, path = str(entry).partition("=")
    out.append(Spec(arch.strip(), path.strip(), i))
  return out


def is_ensemble(config: ml_collections.ConfigDict) -> bool:
  """Whether the method sees its teachers' outputs as a list (`config.teachers` is set)."""
  return bool(config.teachers)


def auto_workdir(config: ml_collections.ConfigDict, spec: Spec, dataset_name: str, workdir: str) -> str:
  """Where a teacher without checkpoint is trained (and found by later runs)."""
  data_name = config.teacher.dataset or dataset_name
  path = config.teacher.auto_workdir.format(dataset=data_name, arch=spec.arch, workdir=workdir)
  return path + (f"_seed{spec.index}" if spec.index else "")


def teacher_run_config(config: ml_collections.ConfigDict, spec: Spec) -> ml_collections.ConfigDict:
  """The config that trains the teacher `spec` of `config` (its recipe, seed `seed + index`)."""
  c = recipes.teacher_config(config)
  c.model = spec.arch
  c.seed = config.seed + spec.index
  return c


def _check_spec(config: ml_collections.ConfigDict, spec: Spec, streaming: bool, dataset_name: str) -> None:
  """Rejects an unknown architecture or a missing checkpoint, naming the config field."""
  if not spec.arch:
    raise UserError(f"method {config.method!r} needs a teacher: set config.teacher.arch "
                    f"(valid models: {', '.join(models_lib.names())}).")
  if spec.arch not in models_lib.names():
    field = "config.teachers" if config.teachers else "config.teacher.arch"
    raise UserError(f"unknown teacher model {spec.arch!r} ({field}); valid models: "
                    f"{', '.join(models_lib.names())}")
  if spec.checkpoint and not os.path.exists(spec.checkpoint):
    raise ckpt_lib.CheckpointError(
        f"teacher checkpoint {spec.checkpoint!r} (config.teachers) does not exist. Give a kdjax run "
        "workdir, a directory from `python -m kdjax.convert`, a PyTorch .pth file, or only the "
        "architecture to train the teacher first.")
  if not spec.checkpoint and streaming:
    raise ckpt_lib.CheckpointError(
        f"no checkpoint for the {spec.arch} teacher on {dataset_name}: set config.teacher.checkpoint "
        "(e.g. torchvision's pretrained .pth); kdjax auto-trains teachers only on in-memory datasets.")


def pending(config: ml_collections.ConfigDict, dataset_name: str, workdir: str,
            streaming: bool = False) -> list[tuple[ml_collections.ConfigDict, str]]:
  """(config, workdir) of each named teacher that must be trained before the run can start."""
  out = []
  for spec in specs(config):
    _check_spec(config, spec, streaming, dataset_name)
    path = auto_workdir(config, spec, dataset_name, workdir)
    if not spec.checkpoint and not ckpt_lib.is_model_dir(os.path.join(path, "model")):
      out.append((teacher_run_config(config, spec), path))
  return out


def load_teacher(config: ml_collections.ConfigDict, dataset: data_lib.Dataset, workdir: str,
                 spec: Optional[Spec] = None, shared_labels: bool = True) -> Teacher:
  """Loads one teacher (its checkpoint, or the model its auto-training run exported)."""
  spec = spec if spec is not None else specs(config)[0]
  _check_spec(config, spec, data_lib.is_streaming(dataset), dataset.name)
  path = spec.checkpoint or auto_workdir(config, spec, dataset.name, workdir)
  if path.endswith((".pth", ".pt", ".tar")):
    from kdjax import convert  # pylint: disable=import-outside-toplevel  (imports torch lazily)
    try:
      variables = convert.from_torch(path, spec.arch, num_classes=dataset.num_classes)
    except (ValueError, ImportError) as e:
      raise ckpt_lib.CheckpointError(f"cannot use {path} as the {spec.arch} teacher: {e}") from None
    meta = {"arch": spec.arch, "num_classes": dataset.num_classes, "source": path}
  else:
    variables, meta = ckpt_lib.load_model(path)
  check_meta(config, meta, spec.arch, dataset, path, shared_labels)
  module = models_lib.get(spec.arch, num_classes=meta.get("num_classes", dataset.num_classes),
                          dtype=models_lib.compute_dtype(config.dtype))
  variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  adapter = input_adapter(meta, dataset)
  size = adapter.image_size if adapter is not None and adapter.image_size else data_lib.image_shape(dataset)[0]
  check_shapes(module, variables, (size, size, data_lib.image_shape(dataset)[2]), spec.arch, path)
  return Teacher(module, variables, meta, adapter)


def _leaves(tree) -> dict[str, tuple[int, ...]]:
  return {"/".join(str(getattr(k, "key", k)) for k in p): tuple(np.shape(v))
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def check_shapes(module, variables: PyTree, image_shape: tuple[int, ...], arch: str, path: str) -> None:
  """Refuses variables whose tree or shapes are not `arch`'s, naming the first parameter that differs."""
  init = lambda key, x: module.init(key, x, train=False)
  expected = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32))
  want = _leaves({"params": expected["params"], "batch_stats": expected.get("batch_stats", {})})
  have = _leaves(variables)
  for key in sorted(set(want) | set(have)):
    if want.get(key) != have.get(key):
      raise ckpt_lib.CheckpointError(
          f"teacher checkpoint {path} does not hold a {arch} of this config: parameter {key} is "
          f"{have.get(key, 'missing')} there but {want.get(key, 'absent')} in {arch} "
          f"({module.num_classes if hasattr(module, 'num_classes') else '?'} classes). Check the "
          "checkpoint's meta.json (arch, num_classes) and config.teacher.arch.")


def check_meta(config: ml_collections.ConfigDict, meta: dict, arch: str,
               dataset: data_lib.Dataset, path: str, shared_labels: bool = True) -> None:
  """Refuses a teacher of another architecture, or of another label space for a KD-style method."""
  if meta.get("arch", arch) != arch:
    raise ckpt_lib.CheckpointError(
        f"teacher checkpoint {path} holds a {meta['arch']}, but config.teacher.arch is {arch}.")
  other_data = (meta.get("num_classes", dataset.num_classes) != dataset.num_classes
                or meta.get("dataset", dataset.name) != dataset.name)
  if shared_labels and other_data:
    raise UserError(
        f"the teacher {path} was trained on {meta.get('dataset', '?')} ({meta.get('num_classes')} "
        f"classes) but the student trains on {dataset.name} ({dataset.num_classes} classes); method "
        f"{config.method!r} compares their outputs over one label space. Use a teacher trained on "
        f"{dataset.name}, or a method without shared labels (e.g. fkd) for cross-dataset distillation.")
  if shared_labels and "mean" in meta and not np.allclose(meta["mean"], dataset.mean, atol=1e-3):
    raise ckpt_lib.CheckpointError(
        f"teacher checkpoint {path} was trained with input mean {meta['mean']}, but {dataset.name} "
        f"is normalised with {list(dataset.mean)}; a teacher must see the normalisation it was "
        "trained with.")


def input_adapter(meta: dict, dataset: data_lib.Dataset) -> Optional[TeacherInput]:
  """The input adapter for a teacher trained with other normalisation or image size (else None)."""
  size = int(meta.get("image_size", data_lib.image_shape(dataset)[0]))
  same_norm = ("mean" not in meta or (np.allclose(meta["mean"], dataset.mean, atol=1e-6)
                                      and np.allclose(meta["std"], dataset.std, atol=1e-6)))
  if same_norm and size == data_lib.image_shape(dataset)[0]:
    return None
  return TeacherInput(mean=tuple(meta.get("mean", dataset.mean)), std=tuple(meta.get("std", dataset.std)),
                      image_size=size)


def load_teachers(config: ml_collections.ConfigDict, dataset: data_lib.Dataset, workdir: str,
                  method: methods_base.Method) -> list[Teacher]:
  """Every teacher `config` names, loaded (train the `pending` ones first)."""
  named = specs(config)
  if len(named) > 1 and not method.multi_teacher:
    raise UserError(f"method {config.method!r} takes one teacher, but config.teachers names "
                    f"{len(named)}; ensembles work with methods such as kd, dkd and fkd.")
  return [load_teacher(config, dataset, workdir, spec, method.shared_labels) for spec in named]


def adapt_teacher_input(x: jax.Array, student_mean, student_std, spec: Optional[TeacherInput]) -> jax.Array:
  """Re-normalises (and resizes) a normalised student batch for a teacher of another dataset."""
  if spec is None:
    return x
  dtype = x.dtype
  raw = x * jnp.asarray(student_std, dtype) + jnp.asarray(student_mean, dtype)
  out = (raw - jnp.asarray(spec.mean, dtype)) / jnp.asarray(spec.std, dtype)
  if spec.image_size and spec.image_size != x.shape[1]:
    out = jax.image.resize(out, (x.shape[0], spec.image_size, spec.image_size, x.shape[3]),
                           "linear", antialias=True)
  return out


def forward(modules: Sequence[Any], inputs: Sequence[Optional[TeacherInput]], variables: Sequence[PyTree],
            x: jax.Array, key: jax.Array, *, mean, std, bn_mode: str = "eval") -> list:
  """Each teacher's `(logits, features)` on the student batch `x`, under stop_gradient."""
  outs = []
  for k, (module, spec, v) in enumerate(zip(modules, inputs, variables, strict=True)):
    xt = adapt_teacher_input(x, mean, std, spec)
    if bn_mode == "batch_stats":
      # Batch statistics, as the references that leave the teacher in train mode; its
      # running statistics are never read in that mode, so dropping them is exact.
      out, _ = module.apply(v, xt, train=True, mutable=["batch_stats"],
                            rngs={"dropout": jax.random.fold_in(key, k)})
    else:
      out = module.apply(v, xt, train=False)
    outs.append(jax.lax.stop_gradient(out))
  return outs


def make_teacher_forward(teachers: Sequence[Teacher], *, mean, std, bn_mode: str = "eval",
                         ensemble: bool = False) -> Callable:
  """`forward(teacher_vars, x, key) -> teacher_out` over one variables tree per teacher.

  What the method sees is decided here and only here: the list of every teacher's
  `(logits, features)` for an ensemble (`is_ensemble`), else the one teacher's pair.
  """
  modules, inputs = [t.module for t in teachers], [t.input for t in teachers]
  if not ensemble and len(modules) != 1:
    raise ValueError(f"{len(modules)} teachers given to a single-teacher forward; pass ensemble=True")

  def apply(teacher_vars: Sequence[PyTree], x: jax.Array, key: jax.Array):
    outs = forward(modules, inputs, teacher_vars, x, key, mean=mean, std=std, bn_mode=bn_mode)
    return outs if ensemble else outs[0]

  return apply
