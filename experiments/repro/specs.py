"""What a table's rows are: one `MethodSpec` per method (or variant, or ablation) of a table."""
from __future__ import annotations

import dataclasses
import glob
import os
import sys
from types import ModuleType
from typing import Optional, Sequence

from . import tables

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(ROOT, "configs")
TEACHER_CONFIG = "configs/teacher_cifar.py"
# Stands for the pair in a MethodSpec.config_arg shared by several pairs.
PAIR_PLACEHOLDER = "{pair}"


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """A row of the table: how its jobs are configured and what the paper reported."""
  name: str
  config: str                    # config path relative to ROOT, as passed to --config
  pairs: tuple[str, ...]         # 'teacher,student' pairs the config has
  reported: dict[str, float]     # 'teacher,student' -> published top-1
  metric: str                    # 'best' | 'last' | 'unknown': what `reported` is
  module: Optional[ModuleType] = None
  uses_teacher: bool = True      # False: the student trained alone (no teacher job needed)
  config_arg: str = ""           # the config's argument for the student jobs ('' : the pair)
  teacher_config: str = ""       # 'path:arg' of the teacher job ('' : configs/teacher_cifar.py:ARCH)
  teacher_job: bool = True       # False: the config names the teacher's checkpoint (ImageNet)
  notes: dict[str, str] = dataclasses.field(default_factory=dict)  # pair -> note on the published number


def available_methods(config_dir: str = CONFIG_DIR, suffix: str = "_cifar") -> dict[str, str]:
  """Method name -> config path (relative to ROOT) for every `configs/<method><suffix>.py` but the teacher's."""
  found = {}
  for path in sorted(glob.glob(os.path.join(config_dir, f"*{suffix}.py"))):
    name = os.path.basename(path)[:-len(f"{suffix}.py")]
    if name != "teacher":
      found[name] = os.path.relpath(path, ROOT)
  return found


def config_key(path: str) -> str:
  """The key of a config file in `tables` ('configs/kd_cifar.py' -> 'kd_cifar')."""
  return os.path.splitext(os.path.basename(path))[0]


def load_config_module(path: str) -> ModuleType:
  """Imports a config file (path relative to ROOT) with kdjax's one config loader."""
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  from kdjax import recipes  # pylint: disable=import-outside-toplevel  (JAX only when a table needs it)
  return recipes.load_config_module(os.path.join(ROOT, path))


def metric_of(name: str, key: str) -> str:
  """'best' | 'last' | 'unknown': the config's entry in `tables.REPORTED_METRIC`, else the method's."""
  return tables.REPORTED_METRIC.get(key) or tables.METHOD_METRIC.get(name, "unknown")


def method_spec(name: str, table_pairs: Sequence[str], config_dir: str = CONFIG_DIR,
                suffix: str = "_cifar") -> MethodSpec:
  """The spec of `name` ('vanilla' or a `configs/<name><suffix>.py` with PAIRS).

  How its jobs get a teacher follows from its config: none for a method without one
  (online methods: the pair is the networks trained together, the config's argument); the
  checkpoint the config names (ImageNet: torchvision's teachers); the config's own teacher
  job when `tables.TEACHER_JOB` names one (SFTN's student-friendly teacher, one per pair),
  trained where the config's `teacher.auto_workdir` puts it; else the teacher recipe.
  """
  if name == "vanilla":
    reported = {p: tables.STUDENT_REPORTED[p.split(",")[1]] for p in table_pairs
                if p.split(",")[1] in tables.STUDENT_REPORTED}
    return MethodSpec("vanilla", TEACHER_CONFIG, tuple(table_pairs), reported, "last", uses_teacher=False)
  configs = available_methods(config_dir, suffix)
  if name not in configs:
    raise ValueError(f"unknown method {name!r}; methods with a configs/<method>{suffix}.py: "
                     f"{', '.join(['vanilla', *configs])}")
  module, key = load_config_module(configs[name]), config_key(configs[name])
  if not hasattr(module, "PAIRS"):
    raise ValueError(f"{configs[name]} has no PAIRS table, so it cannot be part of a paper table")
  pairs = tuple(p for p in table_pairs if p in module.PAIRS)
  extra = {}
  if pairs:
    from kdjax import methods  # pylint: disable=import-outside-toplevel
    config = module.get_config(pairs[0])
    if not methods.get(config.method, config).needs_teacher:
      extra = {"uses_teacher": False, "config_arg": PAIR_PLACEHOLDER}
    elif config.teacher.checkpoint:
      extra = {"teacher_job": False}
    elif key in tables.TEACHER_JOB:
      # The jobs ask the trainer where each pair's teacher goes (jobs.teacher_workdir).
      extra = {"teacher_config": f"{configs[name]}:{tables.TEACHER_JOB[key]}"}
  return MethodSpec(name, configs[name], pairs, dict(tables.REPORTED.get(key, {})),
                    metric_of(name, key), module, **extra)


def variant_specs(table: str, names: Optional[Sequence[str]] = None) -> list[MethodSpec]:
  """The rows of a variant table: `names` (default: the config's ROWS), each one spec."""
  path = tables.VARIANT_TABLES[table]
  module = load_config_module(path)
  (pair,) = tables.TABLES[table]
  key = config_key(path)
  names = list(names) if names else list(module.ROWS)
  metric = tables.REPORTED_METRIC.get(key, "unknown")
  notes = tables.REPORTED_NOTES.get(key, {})
  reported = tables.REPORTED.get(key, {})
  specs = []
  for name in names:
    if name == tables.TEACHER_VARIANT:
      raise ValueError(f"{name!r} is the teacher job of every row, not a row of {table}")
    try:
      config = module.get_config(name)
    except Exception as e:  # noqa: BLE001  (the config's UserError says what is valid)
      raise ValueError(f"{table}: {e}") from e
    specs.append(MethodSpec(
        name, path, (pair,), {pair: reported[name]} if name in reported else {},
        metric if metric in ("best", "last") else "unknown", module,
        uses_teacher=config.method != "vanilla", config_arg=name,
        teacher_config=f"{path}:{tables.TEACHER_VARIANT}",
        notes={pair: notes[name]} if name in notes else {}))
  return specs


def ablation_specs(table: str, names: Optional[Sequence[str]], pairs: Sequence[str]) -> list[MethodSpec]:
  """The rows of an ablation table: `names` (default: its `tables.ABLATION_ROWS`), each over `pairs`."""
  path = tables.ABLATION_TABLES[table]
  module = load_config_module(path)
  key = config_key(path)
  rows = tables.ABLATION_ROWS[key]
  names = list(names) if names else list(rows)
  reported = tables.ABLATION_REPORTED.get(key, {})
  metrics = tables.ABLATION_REPORTED_METRIC.get(key, {})
  notes = tables.ABLATION_NOTES.get(key, {})
  specs = []
  for name in names:
    if name not in rows:
      raise ValueError(f"unknown ablation {name!r} of {table}; valid: {', '.join(rows)}")
    for pair in pairs:
      try:
        module.get_config(f"{pair},{name}")
      except Exception as e:  # noqa: BLE001  (the config's UserError says what is valid)
        raise ValueError(f"{table}: {e}") from e
    specs.append(MethodSpec(
        name, path, tuple(pairs), dict(reported.get(name, {})), metrics.get(name, "unknown"), module,
        config_arg=f"{PAIR_PLACEHOLDER},{name}", notes=dict(notes.get(name, {}))))
  return specs


