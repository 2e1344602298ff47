"""Config building blocks shared by `configs/*.py` and by the trainer.

The CRD/mdistiller CIFAR-100 protocol lives here once (protocol.md §1.3): SGD
momentum 0.9, weight decay 5e-4, batch 64, 240 epochs, LR x0.1 after epochs
150/180/210, LR 0.05 (0.01 for MobileNetV2/ShuffleNet students). Every method's
hyperparameters get a node (`config.kd`, `config.dkd`, ...) with its published
defaults, so any field can be overridden with `--config.<node>.<field>=...` and a
typo is rejected by the locked config.
"""
from __future__ import annotations

import ml_collections

from kdjax.errors import UserError

# Students trained at LR 0.01 in the CRD/mdistiller CIFAR protocol.
SMALL_LR_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")


def method_defaults() -> ml_collections.ConfigDict:
  """One node per registered method with its published defaults (declared in the method's file)."""
  from kdjax import methods  # pylint: disable=import-outside-toplevel
  c = ml_collections.ConfigDict()
  for name, values in methods.registry.defaults().items():
    c[name] = values
  return c


def base_config() -> ml_collections.ConfigDict:
  """Every field a run reads, at the CIFAR-100 protocol's values."""
  c = method_defaults()
  c.seed = 0
  c.method = "vanilla"
  c.model = "resnet8x4"
  # Compute dtype of the networks ('float32' or 'bfloat16'); params, BN statistics
  # and losses stay float32.
  c.dtype = "float32"

  c.data = ml_collections.ConfigDict()
  c.data.name = "cifar100"
  c.data.data_dir = ""        # empty: TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  c.data.download = False     # True: let TFDS download and prepare the data first
  c.data.manual_dir = ""      # TFDS manual_dir (imagenet2012's archives); empty: <data_dir>/downloads/manual
  c.data.crop_padding = 4
  c.data.flip = True
  # Resize every image to this side at load time (0: native). STL-10 (96 px) at 32
  # feeds a CIFAR student and teacher.
  c.data.image_size = 0
  # STL-10 only: add the 100000-image unlabelled split to the training set (label -1).
  c.data.unlabelled = False
  # Independently augmented views per step: a cohort model (online methods) gets
  # one view per member when this equals its size (KDCL); 1 otherwise.
  c.data.views = 1

  c.batch_size = 64           # global batch, split over all devices
  c.eval_batch_size = 500
  c.epochs = 240
  # The reference loaders keep the short last batch (782 steps/epoch at batch
  # 64); kdjax drops it (781) so every step has one static shape.
  c.drop_remainder = True

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 0.05
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.weight_decay = 5e-4   # coupled L2 on every parameter, as PyTorch SGD
  c.optim.lr_milestones = (150, 180, 210)  # LR x decay from these 0-indexed epochs on
  c.optim.lr_decay = 0.1

  c.teacher = ml_collections.ConfigDict()
  c.teacher.arch = ""
  # A kdjax run workdir, a model dir from `python -m kdjax.convert`, or a .pth file.
  # Empty: train the teacher first with the teacher recipe into `auto_workdir`.
  c.teacher.checkpoint = ""
  c.teacher.auto_workdir = "runs/teachers/{dataset}_{arch}"
  c.teacher.train_epochs = 240
  c.teacher.train_lr = 0.05
  c.teacher.train_lr_milestones = (150, 180, 210)
  # Batch and weight decay of the auto-trained teacher (0 / -1: the student's).
  c.teacher.train_batch_size = 0
  c.teacher.train_weight_decay = -1.0
  # Method of the auto-trained teacher run: 'vanilla', or e.g. 'sftn' (a
  # student-friendly teacher trained with branches of `config.model`).
  c.teacher.recipe = "vanilla"
  # Dataset of the auto-trained teacher ('' = the student's): a CIFAR-100 teacher for a
  # cross-dataset student (FKD).
  c.teacher.dataset = ""
  # 'eval': the teacher's BatchNorm uses running statistics (mdistiller, RepDistiller);
  # 'batch_stats': batch statistics, as official ReviewKD CIFAR and mdistiller's OFD.
  c.teacher.bn_mode = "eval"
  # Several teachers (an ensemble): each 'ARCH' or 'ARCH=CHECKPOINT'. Empty: the one
  # teacher of `config.teacher`. An ARCH without checkpoint is auto-trained with seed
  # `seed + i` into `teacher.auto_workdir` + '_seed<i>' (i > 0).
  c.teachers = ()

  c.log_every_steps = 100
  c.progress_bar = True
  return c


def student_lr(student: str) -> float:
  """The CIFAR protocol's LR for `student`."""
  return 0.01 if student in SMALL_LR_STUDENTS else 0.05


def parse_pair(arg: str | None, default: str, valid: dict[str, dict]) -> tuple[str, str]:
  """'teacher,student' -> (teacher, student), checked against the table of published pairs."""
  arg = arg or default
  parts = [p.strip() for p in arg.split(",")]
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
  c.teacher.arch = ""
  c.teacher.checkpoint = ""
  c.teachers = ()
  if student_config.teacher.dataset:
    c.data.name = student_config.teacher.dataset
    c.data.image_size = 0
  # STL-10 only: add the 100000-image unlabelled split to the training set (label -1).
  c.data.unlabelled = False
  c.data.views = 1
  c.epochs = student_config.teacher.train_epochs
  c.optim.lr = student_config.teacher.train_lr
  c.optim.lr_milestones = tuple(student_config.teacher.train_lr_milestones)
  if student_config.teacher.train_batch_size:
    c.batch_size = student_config.teacher.train_batch_size
  if student_config.teacher.train_weight_decay >= 0:
    c.optim.weight_decay = student_config.teacher.train_weight_decay
  return c
