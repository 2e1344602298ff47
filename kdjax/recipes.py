"""Config building blocks shared by `configs/*.py` and by the trainer.

The CRD/mdistiller CIFAR-100 protocol lives here once (docs/protocol.md §1.3): SGD
momentum 0.9, weight decay 5e-4, batch 64, 240 epochs, LR x0.1 after epochs
150/180/210, LR 0.05 (0.01 for MobileNetV2/ShuffleNet students). Every method's
hyperparameters get a node (`config.kd`, `config.dkd`, ...) with its published
defaults, so any field can be overridden with `--config.<node>.<field>=...` and a
typo is rejected by the locked config.
"""
from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import ml_collections

from kdjax import defaults, methods
from kdjax.errors import UserError

# The 13 teacher,student pairs of the CRD benchmark (RepDistiller README; the DKD paper's two
# CIFAR-100 tables), the pairs of every baseline config that covers the whole benchmark.
CRD_BENCHMARK_PAIRS = (
    "resnet56,resnet20", "resnet110,resnet20", "resnet110,resnet32", "resnet32x4,resnet8x4",
    "wrn_40_2,wrn_16_2", "wrn_40_2,wrn_40_1", "vgg13,vgg8", "vgg13,MobileNetV2", "ResNet50,MobileNetV2",
    "ResNet50,vgg8", "resnet32x4,ShuffleV1", "resnet32x4,ShuffleV2", "wrn_40_2,ShuffleV1")

# Students trained at LR 0.01 in the CRD/mdistiller CIFAR protocol.
SMALL_LR_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")


def method_defaults() -> ml_collections.ConfigDict:
  """One node per registered method with its published defaults (declared in the method's file)."""
  return ml_collections.ConfigDict(methods.registry.defaults())


def base_config() -> ml_collections.ConfigDict:
  """Every field a run reads, at the CIFAR-100 protocol's values, and every method's node."""
  return defaults.base_config(methods.registry.defaults())


def load_config_module(path: str) -> ModuleType:
  """Imports the config file `path` (`configs/` is not a package) as a module of its own."""
  name = "kdjax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None:
    raise UserError(f"cannot load config file {path!r}: it must be a Python file with get_config().")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sibling_config(config_file: str, name: str) -> ModuleType:
  """The config `name` (e.g. 'kd_imagenet.py') next to `config_file` (a config's `__file__`)."""
  return load_config_module(os.path.join(os.path.dirname(os.path.abspath(config_file)), name))


def student_lr(student: str) -> float:
  """The CIFAR protocol's LR for `student`."""
  return 0.01 if student in SMALL_LR_STUDENTS else 0.05


def _typed(key: str, value: str, default):
  """`value` (text) as the type of `default`."""
  if isinstance(default, bool):
    if value.lower() not in ("true", "false", "1", "0"):
      raise UserError(f"config argument {key}={value!r}: expected true or false.")
    return value.lower() in ("true", "1")
  if isinstance(default, (int, float)) and not isinstance(default, bool):
    try:
      return type(default)(value)
    except ValueError:
      raise UserError(f"config argument {key}={value!r}: expected a {type(default).__name__}.") from None
  return value


def parse_arg(arg: str | None, *, positional: tuple[str, ...] = (), rest: str = "",
              **defaults) -> ml_collections.ConfigDict:
  """The one grammar of config arguments (big_vision's `parse_arg`): 'a,b,key=value,flag'.

  Leading tokens without '=' fill the `positional` names in order ('' when absent), then,
  where `rest` names a key, every further one goes into that key's tuple (a cohort's
  networks); `key=value` sets a declared key, typed by its default; a bare token names a
  boolean key and sets it True. Anything else is refused with the valid keys.
  """
  out = ml_collections.ConfigDict({name: "" for name in positional})
  if rest:
    out[rest] = ()
  out.update(defaults)
  tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
  filled = 0
  for token in tokens:
    key, eq, value = token.partition("=")
    if eq:
      if key not in defaults:
        raise UserError(f"unknown config argument {key!r} in {arg!r}; valid keys: "
                        f"{', '.join(sorted(defaults)) or 'none'}.")
      out[key] = _typed(key, value, defaults[key])
    elif filled < len(positional) and not (token in defaults and isinstance(defaults[token], bool)):
      out[positional[filled]] = token
      filled += 1
    elif isinstance(defaults.get(token), bool):
      out[token] = True
    elif rest:
      out[rest] = tuple(out[rest]) + (token,)
    else:
      flags = [k for k, v in defaults.items() if isinstance(v, bool)]
      raise UserError(f"unexpected {token!r} in config argument {arg!r}; it takes "
                      f"{','.join(positional) or 'no positional values'}"
                      + (f" and the flags {', '.join(flags)}" if flags else "") + ".")
  return out


def parse_pair(arg: str | None, default: str, valid: dict[str, dict]) -> tuple[str, str]:
  """'teacher,student' -> (teacher, student), checked against the table of published pairs."""
  arg = arg or default
  try:
    a = parse_arg(arg, positional=("teacher", "student"))
    parts = [a.teacher, a.student]
  except UserError:
    parts = []
  if len(parts) != 2 or f"{parts[0]},{parts[1]}" not in valid:
    raise UserError(f"unknown teacher,student pair {arg!r}; valid pairs: {', '.join(valid)}. "
                    "For an unpublished pair, start from a listed one and override "
                    "--config.teacher.arch and --config.model.")
  return parts[0], parts[1]


def distill_config(method: str, pair: str | None, default: str,
                   table: dict[str, dict]) -> ml_collections.ConfigDict:
  """The CIFAR-100 config of `method` for a published pair, with the pair's overrides applied."""
  teacher, student = parse_pair(pair, default, table)
  c = base_config()
  c.method = method
  c.model = student
  c.teacher.arch = teacher
  c.optim.lr = student_lr(student)
  for key, value in table[f"{teacher},{student}"].items():
    node, field = key.split(".")
    c[node][field] = value
  return c


def teacher_config(student_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The vanilla recipe that trains `student_config`'s teacher on the same data."""
  c = ml_collections.ConfigDict(student_config.to_dict())
  c.method = student_config.teacher.recipe
  c.model = student_config.teacher.arch
  c.teacher.arch, c.teacher.recipe = "", "vanilla"
  c.teacher.checkpoint = ""
  c.seeds = ""  # the students' seeds share one teacher (trained with config.seed)
  c.teachers = ()
  if student_config.teacher.dataset:
    c.data.name = student_config.teacher.dataset
    c.data.image_size = 0
  # STL-10 only: add the 100000-image unlabelled split to the training set (label -1).
  c.data.unlabelled = False
  c.epochs = student_config.teacher.train_epochs
  c.optim.lr = student_config.teacher.train_lr
  c.optim.lr_milestones = tuple(student_config.teacher.train_lr_milestones)
  if student_config.teacher.train_batch_size:
    c.batch_size = student_config.teacher.train_batch_size
  if student_config.teacher.train_weight_decay >= 0:
    c.optim.weight_decay = student_config.teacher.train_weight_decay
  return c
