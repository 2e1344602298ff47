"""Runs a CIFAR-100 table of the DKD paper with kdjax and writes it beside the published numbers.

    python experiments/reproduce.py --table=cifar100_same_arch --methods=vanilla,kd,dkd \
        --seeds=3 --workdir=runs/repro_same --jobs=1

Plans one job per teacher (seed 0) and one per method x pair x seed, runs the
teachers first and then the students (N subprocesses at once), skips every job
whose workdir already holds a finished run, and writes `WORKDIR/table.md` and
`WORKDIR/table.csv`: per cell the best-epoch and last-epoch top-1 (mean, sample
std, n) over the finished seeds, the published number and the difference.

Layout of WORKDIR:
  teachers/<dataset>_<arch>/           the teachers (shared by every job of that teacher)
  runs/<method>/<teacher>_<student>/seed<k>/   the distillation runs
  runs/vanilla/<student>/seed<k>/      the student baselines (one per student, shared by its pairs)
  logs/...                             each job's stdout/stderr, same paths as above
  reproduce.log                        what this runner ran, skipped, refused or saw fail
  table.md, table.csv                  the table

A method is any `configs/<method>_cifar.py` with PAIRS and REPORTED; its cell
exists only for the pairs its config has. A *variant table* (VARIANT_TABLES, e.g.
`tiny_cnn_dkd`) is one teacher,student pair and one config file whose argument names
the row (`ROWS`, `REPORTED`); its `teacher` variant trains the teacher, and
`--methods` picks rows (default: all of `ROWS`). `vanilla` is the student trained alone
(`configs/teacher_cifar.py:STUDENT`). `--print-commands` prints the jobs for a
cluster queue instead (teachers first: every student line needs its teacher's run
to have finished); `--dry-run` shows the plan; `--report-only` rebuilds the table.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import datetime
import glob
import importlib.util
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from types import ModuleType
from typing import Iterable, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "configs")
TEACHER_CONFIG = "configs/teacher_cifar.py"
DEFAULT_DATASET = "cifar100"

# The two CIFAR-100 tables of the DKD paper (docs/protocol.md §4.1 and §4.2), columns in the paper's order.
TABLES: dict[str, tuple[str, ...]] = {
    "cifar100_same_arch": (
        "resnet56,resnet20", "resnet110,resnet20", "resnet110,resnet32", "resnet32x4,resnet8x4",
        "wrn_40_2,wrn_16_2", "wrn_40_2,wrn_40_1", "vgg13,vgg8"),
    "cifar100_diff_arch": (
        "vgg13,MobileNetV2", "ResNet50,MobileNetV2", "ResNet50,vgg8", "resnet32x4,ShuffleV1",
        "resnet32x4,ShuffleV2", "wrn_40_2,ShuffleV1"),
    # The config's TEACHER,STUDENT (tests check they agree).
    "tiny_cnn_dkd": ("simple_cnn_teacher,simple_cnn_student",),
    # ReviewKD's ablations (MLRC 2021 report): two pairs by default; resnet56,resnet20 (the pair of
    # the report's component table) on request (--pairs).
    "reviewkd_ablation": ("resnet32x4,resnet8x4", "wrn_40_2,wrn_16_2", "resnet56,resnet20"),
    # The DKD paper's ImageNet table (docs/protocol.md §4.4): configs/<method>_imagenet.py, teachers
    # from torchvision's checkpoints named in those configs.
    "imagenet": ("imagenet_resnet34,imagenet_resnet18", "imagenet_resnet50,imagenet_mobilenetv1"),
    # Seed papers: SFTN (KD from the standard vs the student-friendly teacher), FKD (vs KD) and
    # the online methods (AFD vs DML and KDCL; a "pair" is the two networks trained together).
    "sftn": ("resnet32x4,resnet8x4", "wrn_40_2,wrn_16_2", "vgg13,vgg8", "resnet32x4,ShuffleV2"),
    "fkd": ("resnet32x4,resnet8x4", "wrn_40_2,wrn_16_2", "vgg13,vgg8", "resnet32x4,ShuffleV2"),
    "afd": ("resnet32,resnet32",),
}
# The methods a table runs when --methods is not given (default: kd,dkd).
TABLE_DEFAULT_METHODS = {"imagenet": "kd,dkd", "sftn": "kd,sftn", "fkd": "kd,fkd", "afd": "dml,kdcl,afd"}
# Which config files a table's methods come from (default: configs/<method>_cifar.py).
TABLE_CONFIG_SUFFIX = {"imagenet": "_imagenet"}
# The config whose epochs are the table's protocol length (default: the CIFAR teacher recipe).
TABLE_PROTOCOL_CONFIG = {"imagenet": "configs/kd_imagenet.py:", "afd": "configs/afd_cifar.py:"}
# The pairs a table runs when --pairs is not given (default: all of TABLES[table]).
TABLE_DEFAULT_PAIRS = {"reviewkd_ablation": ("resnet32x4,resnet8x4", "wrn_40_2,wrn_16_2")}
# Variant tables: one pair, one config whose argument names the row. The config has ROWS (the
# variants, in order), REPORTED (variant -> published top-1), optionally REPORTED_METRIC,
# REPORTED_NOTES (variant -> text), EPOCHS (the protocol's), and a `teacher` variant (the teacher job).
VARIANT_TABLES = {"tiny_cnn_dkd": "configs/tiny_cnn_cifar10.py"}
TEACHER_VARIANT = "teacher"
# Ablation tables: several pairs, one method config whose argument `teacher,student,<ablation>`
# names the row. The config has ABLATION_ROWS (the baseline first), ABLATION_REPORTED
# (ablation -> pair -> top-1), optionally ABLATION_REPORTED_METRIC (ablation -> 'best' | 'last';
# default 'unknown') and ABLATION_NOTES (ablation -> pair -> text). Teachers: configs/teacher_cifar.py.
ABLATION_TABLES = {"reviewkd_ablation": "configs/reviewkd_cifar.py"}
# Stands for the pair in a MethodSpec.config_arg shared by several pairs.
PAIR_PLACEHOLDER = "{pair}"
# The dataset each table is defined on (config.data.name=... overrides it).
TABLE_DATASETS = {"tiny_cnn_dkd": "cifar10", "imagenet": "imagenet2012"}
TABLE_TITLES = {
    "cifar100_same_arch": "CIFAR-100, teacher and student of the same architecture family "
                          "(DKD paper; docs/protocol.md §4.1)",
    "cifar100_diff_arch": "CIFAR-100, teacher and student of different architecture families "
                          "(DKD paper; docs/protocol.md §4.2)",
    "tiny_cnn_dkd": "CIFAR-10, a third-party DKD study on tiny CNNs: no-KD vs KD vs DKD "
                    "(docs/sources.md [S4]; configs/tiny_cnn_cifar10.py)",
    "reviewkd_ablation": "CIFAR-100, ReviewKD ablations: ABF, what feeds the next level, HCL, review "
                         "(MLRC 2021 report, docs/sources.md [S0]; configs/reviewkd_cifar.py)",
    "imagenet": "ImageNet, KD and DKD (DKD paper; docs/protocol.md §4.4; configs/<method>_imagenet.py)",
    "sftn": "CIFAR-100, SFTN: KD from the standard teacher (`kd`) vs from the student-friendly "
            "teacher (`sftn`) (docs/sources.md [S1]; configs/sftn_cifar.py)",
    "fkd": "CIFAR-100, FKD vs KD (docs/sources.md [S2]; configs/fkd_cifar.py)",
    "afd": "CIFAR-100, online distillation: AFD vs DML and KDCL, two networks trained together "
           "(docs/sources.md [S3]; configs/afd_cifar.py); cells are the ensemble's top-1, results.json "
           "has each network's",
}
# What the "paper" column is, per table (default: the DKD-paper tables' text).
PAPER_NOTES = {
    "tiny_cnn_dkd": "* **paper**: the study's number (its \"mean validation accuracy\"; which epoch is "
                    "not stated, so Δ compares with kdjax's best epoch only). Each row is a variant of "
                    "`configs/tiny_cnn_cifar10.py` (`nokd`: the student alone; `kd_tT`: KD at T, CE 0.5 / "
                    "KD 0.5; `dkd_tT_aA_bB`: DKD at T, alpha A (TCKD), beta B (NCKD)).",
    "reviewkd_ablation": "* **paper**: the ML Reproducibility Challenge 2021 report's number (— where it "
                         "has none): the full method (`release`, the baseline row: the official "
                         "configuration) on every pair it ran, best epoch of the release's code; its "
                         "component ablation on resnet56 → resnet20 only, epoch not stated. Each row is "
                         "an ablation of `configs/reviewkd_cifar.py` (`ABLATIONS`: config.reviewkd "
                         "switches abf, feed, hcl_levels, hcl_weights, review).",
}

# Published teacher and vanilla-student top-1 (RepDistiller README = CRD paper, last epoch;
# the DKD paper copies them): docs/protocol.md §4.1-4.2 and the lists after them.
TEACHER_REPORTED = {"resnet56": 72.34, "resnet110": 74.31, "resnet32x4": 79.42, "ResNet50": 79.34,
                    "wrn_40_2": 75.61, "vgg13": 74.64}
STUDENT_REPORTED = {"resnet20": 69.06, "resnet32": 71.14, "resnet8x4": 72.50, "wrn_16_2": 73.26,
                    "wrn_40_1": 71.98, "vgg8": 70.36, "MobileNetV2": 64.60, "ShuffleV1": 70.50,
                    "ShuffleV2": 71.82}

# Which epoch each method's published number is (docs/protocol.md §3, docs/methods.md §0.5): the
# RepDistiller/CRD rows report the last epoch, mdistiller (DKD) and official ReviewKD the best.
# A config may state it itself with `REPORTED_METRIC = "best" | "last"`.
REPORTED_METRIC = {
    "teacher": "last", "vanilla": "last", "kd": "last", "fitnet": "last", "crd": "last",
    "at": "last", "sp": "last", "cc": "last", "vid": "last", "rkd": "last", "pkt": "last",
    "ab": "last", "ft": "last", "fsp": "last", "nst": "last",
    "dkd": "best", "reviewkd": "best",
}
METRIC_WORDS = {"best": "best epoch", "last": "last epoch", "unknown": "not stated"}

# Fields the runner sets per job; overriding them would break the table's semantics.
RESERVED_FIELDS = ("config.seed", "config.model", "config.teacher.arch", "config.teacher.checkpoint",
                   "config.teacher.auto_workdir")
# A teacher job trains with the teacher recipe, which the distillation configs describe
# under `config.teacher.*`: those overrides become the teacher job's own fields.
TEACHER_FIELD_MAP = {"config.teacher.train_epochs": "config.epochs",
                     "config.teacher.train_lr": "config.optim.lr",
                     "config.teacher.train_lr_milestones": "config.optim.lr_milestones"}


# ----------------------------------------------------------------------------- methods


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
  teacher_dir: str = ""          # teacher workdir name pattern ('' : '{dataset}_{teacher}')
  notes: dict[str, str] = dataclasses.field(default_factory=dict)  # pair -> note on the published number


def available_methods(config_dir: str = CONFIG_DIR, suffix: str = "_cifar") -> dict[str, str]:
  """Method name -> config path (relative to ROOT) for every `configs/<method><suffix>.py` but the teacher's."""
  found = {}
  for path in sorted(glob.glob(os.path.join(config_dir, f"*{suffix}.py"))):
    name = os.path.basename(path)[:-len(f"{suffix}.py")]
    if name != "teacher":
      found[name] = os.path.relpath(path, ROOT)
  return found


def load_config_module(path: str) -> ModuleType:
  """Imports a config file (path relative to ROOT) as a module, the way kdjax.main reads it."""
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  name = "kdjax_reproduce_" + os.path.basename(path)[:-3]
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def metric_of(name: str, module: Optional[ModuleType]) -> str:
  """'best' | 'last' | 'unknown': the config's REPORTED_METRIC, else docs/protocol.md §3, else its docstring."""
  declared = getattr(module, "REPORTED_METRIC", None)
  if declared in ("best", "last"):
    return declared
  if name in REPORTED_METRIC:
    return REPORTED_METRIC[name]
  doc = (getattr(module, "__doc__", None) or "").lower()
  says_best, says_last = "best epoch" in doc, "last epoch" in doc
  if says_best != says_last:
    return "best" if says_best else "last"
  return "unknown"


def method_spec(name: str, table_pairs: Sequence[str], config_dir: str = CONFIG_DIR,
                suffix: str = "_cifar") -> MethodSpec:
  """The spec of `name` ('vanilla' or a `configs/<name><suffix>.py` with PAIRS and REPORTED).

  How its jobs get a teacher follows from its config: none for a method without one
  (online methods: the pair is the networks trained together, the config's argument); the
  checkpoint the config names (ImageNet: torchvision's teachers); the config's own teacher
  job when it declares `TEACHER_JOB` (an argument, `{pair}` standing for the pair) and
  `TEACHER_DIR` (SFTN's student-friendly teacher, one per pair); else the teacher recipe.
  """
  if name == "vanilla":
    reported = {p: STUDENT_REPORTED[p.split(",")[1]] for p in table_pairs
                if p.split(",")[1] in STUDENT_REPORTED}
    return MethodSpec("vanilla", TEACHER_CONFIG, tuple(table_pairs), reported, "last", uses_teacher=False)
  configs = available_methods(config_dir, suffix)
  if name not in configs:
    raise ValueError(f"unknown method {name!r}; methods with a configs/<method>{suffix}.py: "
                     f"{', '.join(['vanilla', *configs])}")
  module = load_config_module(configs[name])
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
    elif hasattr(module, "TEACHER_JOB"):
      extra = {"teacher_config": f"{configs[name]}:{module.TEACHER_JOB}", "teacher_dir": module.TEACHER_DIR}
  return MethodSpec(name, configs[name], pairs, dict(getattr(module, "REPORTED", {})),
                    metric_of(name, module), module, **extra)


def variant_specs(table: str, names: Optional[Sequence[str]] = None) -> list[MethodSpec]:
  """The rows of a variant table: `names` (default: the config's ROWS), each one spec."""
  path = VARIANT_TABLES[table]
  module = load_config_module(path)
  (pair,) = TABLES[table]
  names = list(names) if names else list(module.ROWS)
  metric = getattr(module, "REPORTED_METRIC", "unknown")
  notes = getattr(module, "REPORTED_NOTES", {})
  specs = []
  for name in names:
    if name == TEACHER_VARIANT:
      raise ValueError(f"{name!r} is the teacher job of every row, not a row of {table}")
    try:
      config = module.get_config(name)
    except Exception as e:  # noqa: BLE001  (the config's UserError says what is valid)
      raise ValueError(f"{table}: {e}") from e
    specs.append(MethodSpec(
        name, path, (pair,), {pair: module.REPORTED[name]} if name in module.REPORTED else {},
        metric if metric in ("best", "last") else "unknown", module,
        uses_teacher=config.method != "vanilla", config_arg=name,
        teacher_config=f"{path}:{TEACHER_VARIANT}",
        notes={pair: notes[name]} if name in notes else {}))
  return specs


def ablation_specs(table: str, names: Optional[Sequence[str]], pairs: Sequence[str]) -> list[MethodSpec]:
  """The rows of an ablation table: `names` (default: the config's ABLATION_ROWS), each over `pairs`."""
  path = ABLATION_TABLES[table]
  module = load_config_module(path)
  names = list(names) if names else list(module.ABLATION_ROWS)
  reported = getattr(module, "ABLATION_REPORTED", {})
  metrics = getattr(module, "ABLATION_REPORTED_METRIC", {})
  notes = getattr(module, "ABLATION_NOTES", {})
  specs = []
  for name in names:
    if name not in module.ABLATION_ROWS:
      raise ValueError(f"unknown ablation {name!r} of {table}; valid: {', '.join(module.ABLATION_ROWS)}")
    for pair in pairs:
      try:
        module.get_config(f"{pair},{name}")
      except Exception as e:  # noqa: BLE001  (the config's UserError says what is valid)
        raise ValueError(f"{table}: {e}") from e
    specs.append(MethodSpec(
        name, path, tuple(pairs), dict(reported.get(name, {})), metrics.get(name, "unknown"), module,
        config_arg=f"{PAIR_PLACEHOLDER},{name}", notes=dict(notes.get(name, {}))))
  return specs


# ----------------------------------------------------------------------------- jobs


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


def teacher_workdir(root: str, dataset: str, arch: str) -> str:
  """Where the `arch` teacher of `dataset` is trained (the trainer's auto_workdir pattern)."""
  return os.path.join(root, "teachers", f"{dataset}_{arch}")


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


def dataset_of(overrides: dict[str, str], default: str = DEFAULT_DATASET) -> str:
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


def plan(specs: Sequence[MethodSpec], seeds: int, root: str, overrides: dict[str, str],
         default_dataset: str = DEFAULT_DATASET) -> list[Job]:
  """Teacher jobs (distinct teachers, seed 0) first, then every method x pair x seed job."""
  dataset = dataset_of(overrides, default_dataset)
  # Per-job settings come first so that the user's overrides (e.g. progress_bar) win.
  common = {"config.progress_bar": "False"}
  teachers: dict[str, Job] = {}

  def teacher_of(spec: MethodSpec, pair: str) -> tuple[str, str]:
    """(teacher job's workdir, its config argument) for `pair` under `spec`."""
    arch, student = pair.split(",")
    if spec.teacher_dir:
      workdir = os.path.join(root, "teachers", spec.teacher_dir.format(dataset=dataset, teacher=arch,
                                                                      student=student))
    else:
      workdir = teacher_workdir(root, dataset, arch)
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
      for seed in range(seeds):
        workdir = run_workdir(root, spec.name, pair, seed)
        fields = {**common, "config.seed": str(seed)}
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
          fields["config.teacher.auto_workdir"] = needs if spec.teacher_dir else os.path.join(
              root, "teachers", "{dataset}_{arch}")
        default_epochs = _config_epochs(config_arg)
        fields.update(overrides)
        if any(j.workdir == workdir for j in students):  # vanilla: one run per student
          continue
        students.append(Job("student", spec.name, teacher, student, seed, workdir,
                            (f"--config={config_arg}", f"--workdir={workdir}", *_flags(fields)),
                            _epochs(default_epochs, fields), needs, os.path.relpath(workdir, root)))
  return [*teachers.values(), *students]


def launcher_argv(launcher: str) -> list[str]:
  """The launcher as argv; a bare `python` means this interpreter (the same environment)."""
  argv = shlex.split(launcher)
  if argv and argv[0] in ("python", "python3"):
    argv[0] = sys.executable
  return argv


def command(job: Job, launcher: str) -> str:
  """The job as one shell line (run from the repository root)."""
  return " ".join([launcher, *(shlex.quote(a) for a in job.args)])


def read_results(workdir: str) -> Optional[dict]:
  """The run's results.json, or None if the run has not finished."""
  path = os.path.join(workdir, "results.json")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def job_state(job: Job) -> str:
  """'finished', 'pending', or 'stale' (a finished run of another length is in the workdir)."""
  results = read_results(job.workdir)
  if results is None:
    return "pending"
  return "finished" if results.get("epochs") == job.epochs else "stale"


class RunLog:
  """Appends timestamped lines to WORKDIR/reproduce.log and echoes them."""

  def __init__(self, path: str, echo: bool = True):
    self.path, self.echo = path, echo
    self._lock = threading.Lock()
    os.makedirs(os.path.dirname(path), exist_ok=True)

  def __call__(self, message: str) -> None:
    line = f"{datetime.datetime.now().isoformat(timespec='seconds')} {message}"
    with self._lock:
      with open(self.path, "a") as f:
        f.write(line + "\n")
      if self.echo:
        print(line, flush=True)


def job_env(parallel: int, environ: dict[str, str]) -> dict[str, str]:
  """The jobs' environment: with several jobs at once, each gets its share of an accelerator's memory.

  JAX preallocates 75% of a GPU per process by default, so a second concurrent job on the
  same GPU would run out of memory; a memory setting the user made is left alone.
  """
  env = dict(environ)
  user_set = any(k in env for k in ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE",
                                    "XLA_PYTHON_CLIENT_ALLOCATOR"))
  if parallel > 1 and not user_set:
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{math.floor(90 / parallel) / 100:.2f}"
  return env


def _run_one(job: Job, launcher: str, root: str, log: RunLog, env: dict[str, str]) -> str:
  """Runs one job to completion with its output in logs/<name>.log; returns 'ran' or 'failed'."""
  log_path = os.path.join(root, "logs", job.name + ".log")
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  log(f"start {job.name}: {command(job, launcher)}")
  t0 = time.time()
  with open(log_path, "a") as out:
    rc = subprocess.run([*launcher_argv(launcher), *job.args], cwd=ROOT, stdout=out,
                        stderr=subprocess.STDOUT, env=env, check=False).returncode
  dt = time.time() - t0
  if rc == 0 and job_state(job) == "finished":
    log(f"done {job.name} in {dt:.1f} s")
    return "ran"
  log(f"FAILED {job.name} (exit code {rc}, {dt:.1f} s); see {log_path}")
  return "failed"


def job_state_of_workdir(workdir: str, jobs: Sequence[Job]) -> str:
  """The state of the job that owns `workdir` (a teacher), or 'pending' if none does."""
  owner = next((j for j in jobs if j.workdir == workdir), None)
  return job_state(owner) if owner else "pending"


def run_jobs(jobs: Sequence[Job], launcher: str, parallel: int, root: str, log: RunLog) -> dict[str, str]:
  """Runs the teachers, then the students, `parallel` at a time; job name -> ran|skipped|failed|blocked|stale."""
  status: dict[str, str] = {}
  env = job_env(parallel, dict(os.environ))
  for kind in ("teacher", "student"):
    todo = []
    for job in (j for j in jobs if j.kind == kind):
      state = job_state(job)
      if state == "finished":
        log(f"skip {job.name}: finished (results.json)")
        status[job.name] = "skipped"
      elif state == "stale":
        log(f"REFUSED {job.name}: its results.json is a {read_results(job.workdir).get('epochs')}-epoch "
            f"run, this table asks for {job.epochs}; use another --workdir")
        status[job.name] = "stale"
      elif job.needs and job_state_of_workdir(job.needs, jobs) != "finished":
        log(f"blocked {job.name}: its teacher {os.path.relpath(job.needs, root)} has no finished run")
        status[job.name] = "blocked"
      else:
        todo.append(job)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
      for job, result in zip(todo, pool.map(lambda j: _run_one(j, launcher, root, log, env), todo)):
        status[job.name] = result
  return status


# ----------------------------------------------------------------------------- table


@dataclasses.dataclass
class Cell:
  """One method x pair cell: the finished runs' numbers and the published one."""
  method: str
  teacher: str
  student: str
  paper: Optional[float]
  metric: str
  requested: int
  seeds: list[int] = dataclasses.field(default_factory=list)
  best: list[float] = dataclasses.field(default_factory=list)
  last: list[float] = dataclasses.field(default_factory=list)
  epochs: list[int] = dataclasses.field(default_factory=list)
  devices: list[str] = dataclasses.field(default_factory=list)
  ignored: int = 0               # finished runs of another length than the plan's (not counted)
  workdirs: list[str] = dataclasses.field(default_factory=list)
  note: str = ""                 # on the published number (e.g. the study's NaN runs)


def mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
  """(mean, sample std); std is None below two values, both None for none."""
  if not values:
    return None, None
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def collect(specs: Sequence[MethodSpec], table_pairs: Sequence[str], seeds: int, root: str,
            dataset: str, jobs: Sequence[Job] = ()) -> list[Cell]:
  """The cells of the table, read from the runs' results.json: a teacher row, then one per method.

  A run whose length differs from its planned job's (`jobs`) is left out of the cell, so a
  shortened test run is never averaged with full-length ones.
  """
  expected = {j.workdir: j.epochs for j in jobs}
  cells = []
  for pair in table_pairs:
    teacher, student = pair.split(",")
    cell = Cell("teacher", teacher, student, TEACHER_REPORTED.get(teacher), REPORTED_METRIC["teacher"], 1)
    workdir = teacher_workdir(root, dataset, teacher)
    _add(cell, 0, workdir, expected.get(workdir))
    cells.append(cell)
    for spec in specs:
      if pair not in spec.pairs:
        continue  # the method's config has no such pair: no cell
      cell = Cell(spec.name, teacher, student, spec.reported.get(pair), spec.metric, seeds,
                  note=spec.notes.get(pair, ""))
      for seed in range(seeds):
        workdir = run_workdir(root, spec.name, pair, seed)
        _add(cell, seed, workdir, expected.get(workdir))
      cells.append(cell)
  return cells


def _add(cell: Cell, seed: int, workdir: str, expected_epochs: Optional[int]) -> None:
  """Adds the numbers of the run in `workdir` to `cell` (nothing for an unfinished or other-length one)."""
  results = read_results(workdir)
  if results is None:
    return
  if expected_epochs is not None and results.get("epochs") != expected_epochs:
    cell.ignored += 1
    return
  cell.seeds.append(seed)
  cell.workdirs.append(workdir)
  cell.best.append(float(results["best_top1"]))
  cell.last.append(float(results["last_top1"]))
  cell.epochs.append(int(results["epochs"]))
  if results.get("devices"):
    cell.devices.append(str(results["devices"]))


def _round(x: Optional[float]) -> str:
  return "" if x is None or math.isnan(x) else f"{x:.4f}"


def csv_rows(cells: Sequence[Cell], table: str) -> list[dict[str, str]]:
  """One CSV row per cell; empty strings where there is no number."""
  rows = []
  for c in cells:
    best_mean, best_std = mean_std(c.best)
    last_mean, last_std = mean_std(c.last)
    same = {"best": best_mean, "last": last_mean}.get(c.metric)
    rows.append({
        "table": table, "method": c.method, "teacher": c.teacher, "student": c.student,
        "paper_top1": _round(c.paper), "paper_metric": c.metric,
        "n": str(len(c.seeds)), "n_requested": str(c.requested),
        "seeds": " ".join(map(str, c.seeds)),
        "best_mean": _round(best_mean), "best_std": _round(best_std),
        "last_mean": _round(last_mean), "last_std": _round(last_std),
        "delta_best": _round(best_mean - c.paper if best_mean is not None and c.paper is not None else None),
        "delta_paper_metric": _round(same - c.paper if same is not None and c.paper is not None else None),
        "epochs": " ".join(map(str, sorted(set(c.epochs)))),
        "ignored_runs": str(c.ignored),
        "best_values": " ".join(f"{v:.2f}" for v in c.best),
        "last_values": " ".join(f"{v:.2f}" for v in c.last),
        "paper_note": c.note,
    })
  return rows


def _fmt(values: Sequence[float], requested: int) -> str:
  """'71.23 ± 0.45 (n=3)', '71.23 (n=1 of 3)', or the no-run marker; never an invented number."""
  if not values:
    return f"*no finished run* (0 of {requested})"
  mean, std = mean_std(values)
  n = f"n={len(values)}" + (f" of {requested}" if len(values) < requested else "")
  return f"{mean:.2f} ± {std:.2f} ({n})" if std is not None else f"{mean:.2f} ({n})"


def _signed(x: Optional[float]) -> str:
  return "—" if x is None else f"{x:+.2f}"


def render_markdown(cells: Sequence[Cell], table: str, seeds: int, protocol_epochs: int,
                    command_line: str, dataset: str = DEFAULT_DATASET) -> str:
  """table.md: the measured cells beside the paper, with what each number is."""
  finished = len({w for c in cells for w in c.workdirs})  # teachers and vanilla runs serve several cells
  epochs = sorted({e for c in cells for e in c.epochs})
  devices = sorted({d for c in cells for d in c.devices})
  lines = [
      f"# {TABLE_TITLES.get(table, table)}",
      "",
      f"kdjax measurements ({dataset} test-set top-1, %) from `{command_line}`, "
      f"written {datetime.date.today().isoformat()}; {finished} finished run(s)"
      + (f" on {', '.join(devices)}" if devices else "") + ".",
      "",
      f"* **kdjax best / last**: the best-epoch and the last-epoch top-1 of each run, mean ± sample "
      f"std over the finished seeds (n of {seeds} requested). The teacher row is its one seed-0 run; "
      "a vanilla student's runs are shared by the pairs with that student.",
      PAPER_NOTES.get(table,
      "* **paper**: the published number and which epoch it is. Teacher, student (vanilla) and the "
      "RepDistiller/CRD rows (KD, FitNet, ...) are **last-epoch** numbers from the CRD paper; DKD "
      "(mdistiller) and ReviewKD are **best-epoch** numbers (docs/protocol.md §3, docs/methods.md §0.5)."),
      "* **Δ best**: kdjax best-epoch mean − paper. **Δ same metric**: the kdjax mean of the metric "
      "the paper reported − paper (the like-for-like comparison).",
  ]
  table_dataset = TABLE_DATASETS.get(table, DEFAULT_DATASET)
  if dataset != table_dataset:
    lines += ["", f"**These runs are on `{dataset}`, not the table's `{table_dataset}`: they are not "
                  "comparable with the published numbers, only with each other.**"]
  if epochs and epochs != [protocol_epochs]:
    lines += ["", f"**These runs are {'/'.join(map(str, epochs))} epoch(s) long, not the protocol's "
                  f"{protocol_epochs}: they check the pipeline and are not comparable with the paper.**"]
  lines += ["", "| teacher → student | method | paper (epoch) | kdjax best epoch | kdjax last epoch "
                "| Δ best | Δ same metric | epochs |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
  for c in cells:
    best_mean, _ = mean_std(c.best)
    last_mean, _ = mean_std(c.last)
    same = {"best": best_mean, "last": last_mean}.get(c.metric)
    paper = "—" if c.paper is None else f"{c.paper:.2f} ({c.metric})"
    delta_best = best_mean - c.paper if best_mean is not None and c.paper is not None else None
    delta_same = same - c.paper if same is not None and c.paper is not None else None
    epochs = "/".join(map(str, sorted(set(c.epochs)))) or "—"
    if c.ignored:
      epochs += f" ({c.ignored} run(s) of another length ignored)"
    lines.append(f"| {c.teacher} → {c.student} | {c.method} | {paper} | {_fmt(c.best, c.requested)} | "
                 f"{_fmt(c.last, c.requested)} | {_signed(delta_best)} | {_signed(delta_same)} | "
                 f"{epochs} |")
  notes = [(c, c.note) for c in cells if c.note]
  if notes:
    lines += ["", "Notes on the published numbers:", ""]
    lines += [f"* {c.method} ({c.teacher} → {c.student}): {note}" for c, note in notes]
  if table in VARIANT_TABLES:
    lines += ["", f"Rows are variants of `{VARIANT_TABLES[table]}` (its `ROWS`); the published "
                  "numbers are its `REPORTED` (— where the study has none)."]
  elif table in ABLATION_TABLES:
    lines += ["", f"Rows are ablations of `{ABLATION_TABLES[table]}` (its `ABLATION_ROWS`, the baseline "
                  "first); the published numbers are its `ABLATION_REPORTED` (— where the report has "
                  "none)."]
  else:
    lines += ["", "A method has a row only for the pairs its config lists (`PAIRS` in "
                  "`configs/<method>_cifar.py`); the published numbers are that config's `REPORTED`."]
  return "\n".join(lines) + "\n"


def write_table(cells: Sequence[Cell], root: str, table: str, seeds: int, protocol_epochs: int,
                command_line: str, dataset: str = DEFAULT_DATASET) -> tuple[str, str]:
  """Writes WORKDIR/table.md and WORKDIR/table.csv; returns their paths."""
  os.makedirs(root, exist_ok=True)
  rows = csv_rows(cells, table)
  csv_path, md_path = os.path.join(root, "table.csv"), os.path.join(root, "table.md")
  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["table"])
    writer.writeheader()
    writer.writerows(rows)
  with open(md_path, "w") as f:
    f.write(render_markdown(cells, table, seeds, protocol_epochs, command_line, dataset))
  return md_path, csv_path


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  """The command line."""
  p = argparse.ArgumentParser(
      prog="experiments/reproduce.py", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--table", choices=sorted(TABLES), default="cifar100_same_arch")
  p.add_argument("--methods", default=None,
                 help="comma-separated: 'vanilla' and/or methods with a configs/<method>_cifar.py "
                      "(default kd,dkd); for a variant table (tiny_cnn_dkd) its variants "
                      "(default: all of its config's ROWS); for an ablation table "
                      "(reviewkd_ablation) its ablations (default: all of ABLATION_ROWS)")
  p.add_argument("--pairs", action="append", default=[],
                 help="restrict the table to these pairs, 'teacher,student' (repeatable, or ';'-separated)")
  p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per cell")
  p.add_argument("--workdir", required=True)
  p.add_argument("--jobs", type=int, default=1,
                 help="subprocesses at once (each uses every visible device; with N > 1 each gets "
                      "1/N of 90%% of a GPU's memory unless XLA_PYTHON_CLIENT_* is set)")
  p.add_argument("--override", action="append", default=[], metavar="config.FIELD=VALUE",
                 help="passed to every job as --config.FIELD=VALUE (repeatable)")
  p.add_argument("--launcher", default="python -m kdjax.main",
                 help="the trainer command; a leading 'python' runs this interpreter")
  p.add_argument("--dry-run", action="store_true", help="print the jobs and their commands, run nothing")
  p.add_argument("--print-commands", action="store_true",
                 help="print one command per job (teachers first), run nothing")
  p.add_argument("--only", choices=("all", "teachers", "students"), default="all",
                 help="with --print-commands/--dry-run: only these jobs (e.g. two dependent queue arrays)")
  p.add_argument("--report-only", action="store_true",
                 help="rebuild table.md/table.csv from the finished runs, run nothing (same flags as the run)")
  args = p.parse_args(argv)
  if args.seeds < 1:
    p.error("--seeds must be at least 1")
  return args


def table_pairs(table: str, requested: Sequence[str]) -> tuple[str, ...]:
  """The table's pairs, restricted to `requested` ('t,s' items, ';'-separated allowed) if any."""
  pairs = TABLES[table]
  wanted = [w.replace(" ", "") for item in requested for w in item.split(";") if w.strip()]
  unknown = [w for w in wanted if w not in pairs]
  if unknown:
    raise ValueError(f"pair(s) {', '.join(unknown)} not in {table}; its pairs: {'; '.join(pairs)}")
  return tuple(p for p in pairs if p in wanted) if wanted else TABLE_DEFAULT_PAIRS.get(table, pairs)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Plans, runs (or prints) the jobs and writes the table; exit code 1 if a job failed, 2 for bad input."""
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  root = os.path.abspath(args.workdir)
  try:
    pairs = table_pairs(args.table, args.pairs)
    overrides = parse_overrides(args.override)
    default_methods = ("" if args.table in VARIANT_TABLES or args.table in ABLATION_TABLES
                       else TABLE_DEFAULT_METHODS.get(args.table, "kd,dkd"))
    names = list(dict.fromkeys(m.strip() for m in (args.methods or default_methods).split(",")
                               if m.strip()))
    if args.table in VARIANT_TABLES:
      specs = variant_specs(args.table, names)
    elif args.table in ABLATION_TABLES:
      specs = ablation_specs(args.table, names, pairs)
    else:
      specs = [method_spec(name, pairs, suffix=TABLE_CONFIG_SUFFIX.get(args.table, "_cifar"))
               for name in names]
  except ValueError as e:
    print(f"reproduce: error: {e}", file=sys.stderr)
    return 2
  dataset = dataset_of(overrides, TABLE_DATASETS.get(args.table, DEFAULT_DATASET))
  jobs = plan(specs, args.seeds, root, overrides, TABLE_DATASETS.get(args.table, DEFAULT_DATASET))
  shown = [j for j in jobs if args.only == "all" or j.kind + "s" == args.only]

  if args.print_commands:
    for job in shown:
      print(command(job, args.launcher))
    return 0
  if args.dry_run:
    for spec in specs:
      missing = [p for p in pairs if p not in spec.pairs]
      if missing:
        print(f"# {spec.name}: no config for {'; '.join(missing)} (no cell)")
    for job in shown:
      print(f"[{job.kind}] {job.name} ({job_state(job)})\n    {command(job, args.launcher)}")
    print(f"# {len(shown)} job(s); nothing run (--dry-run)")
    return 0

  status: dict[str, str] = {}
  if not args.report_only:
    log = RunLog(os.path.join(root, "reproduce.log"))
    log(f"reproduce.py {' '.join(shlex.quote(a) for a in argv)}: {len(jobs)} job(s)")
    status = run_jobs(jobs, args.launcher, args.jobs, root, log)
    counts = {s: sum(v == s for v in status.values()) for s in sorted(set(status.values()))}
    log("summary: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
  if args.table in VARIANT_TABLES:
    protocol_epochs = int(load_config_module(VARIANT_TABLES[args.table]).EPOCHS)
  elif args.table in TABLE_PROTOCOL_CONFIG:
    protocol_epochs = _config_epochs(TABLE_PROTOCOL_CONFIG[args.table])
  else:
    protocol_epochs = int(load_config_module(TEACHER_CONFIG).get_config("resnet20").epochs)
  cells = collect(specs, pairs, args.seeds, root, dataset, jobs)
  md, csv_path = write_table(cells, root, args.table, args.seeds, protocol_epochs,
                             "experiments/reproduce.py " + " ".join(shlex.quote(a) for a in argv),
                             dataset)
  print(f"wrote {md} and {csv_path}")
  return 1 if any(s in ("failed", "blocked", "stale") for s in status.values()) else 0


if __name__ == "__main__":
  sys.exit(main())
