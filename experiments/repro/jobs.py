"""The plan: one `Job` per teacher and per method x pair x seed, with its command line."""
from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Optional, Sequence

import ml_collections

from . import tables
from .specs import PAIR_PLACEHOLDER, TEACHER_CONFIG, MethodSpec, load_config_module

# Fields the runner sets per job; overriding them would break the table's semantics.
RESERVED_FIELDS = ("config.seed", "config.seeds", "config.model", "config.teacher.arch", "config.teacher.checkpoint",
                   "config.teacher.auto_workdir")
# A teacher job trains with the teacher recipe, which the distillation configs describe
# under `config.teacher.*`: those overrides become the teacher job's own fields.
TEACHER_FIELD_MAP = {"config.teacher.train_epochs": "config.epochs",
                     "config.teacher.train_lr": "config.optim.lr",
                     "config.teacher.train_lr_milestones": "config.optim.lr_milestones"}


@dataclasses.dataclass(frozen=True)
class Job:
  """One training run: a teacher (seed 0) or a method x pair x seed."""
  kind: str                      # 'teacher' | 'student'
  method: str                    # 'teacher' for teacher jobs
  teacher: str
  student: str                   # the teacher's arch for teacher jobs
  seed: int
  workdir: str
  args: tuple[str, ...]          # after the launcher
  epochs: int                    # the epochs this job's run must have
  needs: Optional[str] = None    # the teacher workdir that must hold a finished run first
  name: str = ""                 # the workdir relative to the table's, e.g. 'runs/kd/resnet56_resnet20/seed0'


def teacher_dir_pattern(root: str, config) -> str:
  """`config`'s `teacher.auto_workdir` moved under `<root>/teachers` (the table's own teacher tree)."""
  return os.path.join(root, "teachers", os.path.basename(config.teacher.auto_workdir))


def teacher_workdir(root: str, dataset: str, arch: str, config=None) -> str:
  """Where the trainer puts the `arch` teacher of `config` (default: the base recipe's) on `dataset`,
  with the table's teachers under `<root>/teachers` (the trainer's `teachers.auto_workdir`)."""
  from kdjax import recipes  # pylint: disable=import-outside-toplevel  (jax loads only when planning)
  from kdjax.train import teachers  # pylint: disable=import-outside-toplevel
  config = recipes.base_config() if config is None else ml_collections.ConfigDict(config.to_dict())
  config.teacher.arch, config.teachers = arch, ()
  config.teacher.auto_workdir = teacher_dir_pattern(root, config)
  return teachers.auto_workdir(config, teachers.specs(config)[0], dataset, workdir=root)


def run_workdir(root: str, method: str, pair: str, seed: int) -> str:
  """`runs/<method>/<teacher>_<student>/seed<k>`; vanilla runs are per student (`runs/vanilla/<student>/...`)."""
  teacher, student = pair.split(",")
  cell = student if method == "vanilla" else f"{teacher}_{student}"
  return os.path.join(root, "runs", method, cell, f"seed{seed}")


def parse_overrides(raw: Iterable[str]) -> dict[str, str]:
  """['config.a.b=v', '--config.c=w'] -> {'config.a.b': 'v', ...}; refuses fields the runner sets."""
  out: dict[str, str] = {}
  for item in raw:
    item = item[2:] if item.startswith("--") else item
    key, eq, value = item.partition("=")
    if not eq or not key.startswith("config."):
      raise ValueError(f"--override={item!r}: expected config.FIELD=VALUE, e.g. config.epochs=1")
    if key in RESERVED_FIELDS:
      raise ValueError(f"--override={item!r}: {key} is set by the runner per job "
                       "(seeds: --seeds; pairs: --table/--pairs)")
    out[key] = value
  return out


def teacher_overrides(overrides: dict[str, str]) -> dict[str, str]:
  """The overrides of a teacher job: all of them, with `config.teacher.train_*` mapped onto its own fields."""
  out = dict(overrides)
  for src, dst in TEACHER_FIELD_MAP.items():
    if src in overrides:
      out[dst] = overrides[src]
  return out


def dataset_of(overrides: dict[str, str], default: str = tables.DEFAULT_DATASET) -> str:
  """The dataset the jobs train on (the table's, CIFAR-100 by default, unless config.data.name says otherwise)."""
  return overrides.get("config.data.name", default).strip("'\"")


def _flags(fields: dict[str, str]) -> tuple[str, ...]:
  return tuple(f"--{k}={v}" for k, v in fields.items())


def _epochs(default: int, fields: dict[str, str]) -> int:
  return int(fields["config.epochs"]) if "config.epochs" in fields else int(default)


def _config_epochs(config_arg: str) -> int:
  """The epochs of `path:arg`'s config."""
  path, _, arg = config_arg.partition(":")
  return int(load_config_module(path).get_config(arg).epochs)


def student_config(spec: MethodSpec, pair: str):
  """The config of `spec`'s student job for `pair` (what its command line's --config builds)."""
  arg = (spec.config_arg or pair).replace(PAIR_PLACEHOLDER, pair)
  module = spec.module or load_config_module(spec.config)
  return module.get_config(arg)


def _vmappable(spec: MethodSpec, pair: str) -> bool:
  """Whether `spec`'s runs on `pair` can train their seeds in one program (no prestage)."""
  from kdjax import methods  # pylint: disable=import-outside-toplevel  (jax loads only when planning)
  config = student_config(spec, pair)
  return methods.get(config.method, config).prestage is None


def plan(specs: Sequence[MethodSpec], seeds: int, root: str, overrides: dict[str, str],
         default_dataset: str = tables.DEFAULT_DATASET, vmap_seeds: bool = False) -> list[Job]:
  """Teacher jobs (distinct teachers, seed 0) first, then every method x pair x seed job.

  `vmap_seeds`: one job per method x pair trains all its seeds in one program
  (`--config.seeds=0,...,N-1` into `runs/<method>/<cell>/`, whose `seed<k>/` are the per-seed
  jobs' workdirs); a method with a prestage keeps one job per seed."""
  dataset = dataset_of(overrides, default_dataset)
  # Per-job settings come first so that the user's overrides (e.g. progress_bar) win.
  common = {"config.progress_bar": "False"}
  teachers: dict[str, Job] = {}

  def teacher_of(spec: MethodSpec, pair: str) -> tuple[str, str]:
    """(teacher job's workdir, its config argument) for `pair` under `spec`."""
    arch = pair.split(",")[0]
    workdir = teacher_workdir(root, dataset, arch, student_config(spec, pair))
    config_arg = (spec.teacher_config or f"{TEACHER_CONFIG}:{arch}").replace(PAIR_PLACEHOLDER, pair)
    return workdir, config_arg

  for spec in specs:
    if not spec.uses_teacher or not spec.teacher_job:
      continue
    for pair in spec.pairs:
      arch = pair.split(",")[0]
      workdir, config_arg = teacher_of(spec, pair)
      if workdir in teachers:
        continue
      fields = {**common, "config.seed": "0", **teacher_overrides(overrides)}
      teachers[workdir] = Job(
          "teacher", "teacher", arch, arch, 0, workdir,
          (f"--config={config_arg}", f"--workdir={workdir}", *_flags(fields)),
          _epochs(_config_epochs(config_arg), fields), name=os.path.relpath(workdir, root))
  students: list[Job] = []
  for spec in specs:
    for pair in spec.pairs:
      teacher, student = pair.split(",")
      together = vmap_seeds and seeds > 1 and _vmappable(spec, pair)
      for seed in range(1 if together else seeds):
        workdir = run_workdir(root, spec.name, pair, seed)
        fields = {**common, "config.seed": str(seed)}
        if together:  # the cell's directory; seed<k>/ below it are what the per-seed jobs write
          workdir = os.path.dirname(workdir)
          fields = {**common, "config.seeds": ",".join(map(str, range(seeds)))}
        if not spec.uses_teacher:
          arg = (spec.config_arg or student).replace(PAIR_PLACEHOLDER, pair)
          config_arg, needs = f"{spec.config}:{arg}", None
        elif not spec.teacher_job:
          config_arg, needs = f"{spec.config}:{(spec.config_arg or pair).replace(PAIR_PLACEHOLDER, pair)}", None
        else:
          config_arg = f"{spec.config}:{(spec.config_arg or pair).replace(PAIR_PLACEHOLDER, pair)}"
          needs = teachers[teacher_of(spec, pair)[0]].workdir
          # The checkpoint makes the job read the teacher job's finished run (a missing one is an
          # error, not a second teacher trained concurrently); auto_workdir names the same place,
          # so the command without the checkpoint flag trains and shares the teacher there.
          fields["config.teacher.checkpoint"] = needs
          fields["config.teacher.auto_workdir"] = teacher_dir_pattern(root, student_config(spec, pair))
        default_epochs = _config_epochs(config_arg)
        fields.update(overrides)
        if any(j.workdir == workdir for j in students):  # vanilla: one run per student
          continue
        students.append(Job("student", spec.name, teacher, student, seed, workdir,
                            (f"--config={config_arg}", f"--workdir={workdir}", *_flags(fields)),
                            _epochs(default_epochs, fields), needs, os.path.relpath(workdir, root)))
  return [*teachers.values(), *students]


