"""SFTN (Park et al., NeurIPS 2021) on CIFAR-100: a student-friendly teacher, then any distillation.

One command runs both phases. The returned config is phase 2 (METHOD, default `kd`, with that
method's own CIFAR config for the pair, e.g. `configs/dkd_cifar.py`'s beta); its
`config.teacher.recipe = 'sftn'` makes the trainer first train the teacher with method `sftn`
(kdjax/methods/sftn.py: student branches of `config.sftn.student` after each teacher stage) into
`config.teacher.auto_workdir` = runs/teachers/<dataset>_<teacher>_sftn_<student>, which later runs
reuse. That workdir names only the teacher and the student: a run with other `config.sftn.*`
values must be given its own `--config.teacher.auto_workdir`.

    python -m kdjax.main --config=configs/sftn_cifar.py:resnet32x4,resnet8x4          # phase 2 = KD
    python -m kdjax.main --config=configs/sftn_cifar.py:resnet32x4,ShuffleV2,dkd

Phase 1 follows the teacher protocol (the paper: "trained jointly from scratch", CRD's setup):
`config.teacher.train_epochs` 240, LR 0.05 x0.1 at 150/180/210, batch 64, weight decay 5e-4, with
l_T = 1, l_R^CE = 1, l_R^KL = 3, tau = 1 (docs/sources.md [S1]). Phase 2 uses the phase-2 method's own
settings (KD: T = 4). Open point (⚠): the paper says its LR is 0.01 "in the ShuffleNet
experiments", which in CRD's protocol (the one it says it follows) is the ShuffleNet *student's*
LR; kdjax applies it to phase 2 only and trains the phase-1 teacher at the teacher LR 0.05 (set
`--config.teacher.train_lr=0.01` for the other reading).

`config.sftn.student` follows `config.model` (set either to change the student; changing
`config.model` alone moves both, and the auto-teacher's workdir with them).

PAIRS: the CRD-benchmark pairs whose students are in the families the paper evaluates (ResNet,
WRN, VGG, ShuffleNetV1/V2; it has no MobileNetV2 student); every pair has the same number of
teacher and student stages, which SFTN's branches need. The paper's exact pair list is in its
Tables 1-2, not retrieved (docs/methods.md §4.3), so experiments/repro/tables.py records none: **no per-pair SFTN number is
known here**, only the paper's averages (+1.58 / +1.51 points over the standard teacher).
"""
import os

from kdjax import recipes
from kdjax.errors import UserError

DEFAULT_PAIR = "resnet32x4,resnet8x4"
DEFAULT_METHOD = "kd"

PAIRS = {pair: {} for pair in (
    "resnet56,resnet20", "resnet110,resnet20", "resnet110,resnet32", "resnet32x4,resnet8x4",
    "wrn_40_2,wrn_16_2", "wrn_40_2,wrn_40_1", "vgg13,vgg8", "ResNet50,vgg8",
    "resnet32x4,ShuffleV1", "resnet32x4,ShuffleV2", "wrn_40_2,ShuffleV1")}


def _method_config(method: str, pair: str):
  """Phase 2's config: `configs/<method>_cifar.py:pair` when that file exists, else the method's defaults."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{method}_cifar.py")
  if method == "sftn":
    raise UserError("METHOD is the phase-2 distillation method (kd, dkd, reviewkd, ...), not sftn.")
  if not os.path.exists(path):
    return recipes.distill_config(method, pair, pair, {pair: {}})
  return recipes.load_config_module(path).get_config(pair)


def get_config(arg: str = DEFAULT_PAIR):
  """Phase-2 config for 'TEACHER,STUDENT[,METHOD]' whose teacher is trained by SFTN first.

  'TEACHER,STUDENT,teacher' is phase 1 alone (the SFTN teacher run), for job runners.
  """
  try:
    a = recipes.parse_arg(arg or DEFAULT_PAIR, positional=("teacher", "student", "method"))
  except UserError:
    a = None
  if a is None or not a.student:
    raise UserError(f"configs/sftn_cifar.py takes 'TEACHER,STUDENT[,METHOD]', got {arg!r}; valid "
                    f"pairs: {', '.join(PAIRS)}.")
  if a.method == "teacher":
    return recipes.teacher_config(get_config(f"{a.teacher},{a.student}"))
  teacher, student = recipes.parse_pair(f"{a.teacher},{a.student}", DEFAULT_PAIR, PAIRS)
  method = a.method or DEFAULT_METHOD
  # A phase-2 method that does not distill is refused by the trainer's config check.
  c = _method_config(method, f"{teacher},{student}")
  c.teacher.recipe = "sftn"
  # Computed references: they follow --config.model, and either can still be set on its own.
  c.sftn.student = c.get_ref("model") + ""
  c.teacher.auto_workdir = "runs/teachers/{dataset}_{arch}_sftn_" + c.get_ref("model")
  return c
