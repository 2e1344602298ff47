"""ICKD-C (Liu et al., ICCV 2021) on CIFAR-100, the seven pairs of its release's table.

The release (docs/sources.md [S8]) is RepDistiller with an `ickd` loss: CE weight 1
(`-r`, its default), KD weight 1 at T = 4 (`-a 1`, the README's "ICKD-C (Ours)" row) and
ICKD weight 2.5 (`-b 2.5`, the README's and `scripts/run_cifar_distill.sh`'s command;
`train_student.sh` shows `-b 4`), on the student's last stage output
(kdjax/methods/ickd.py, docs/methods.md §7.17), with RepDistiller's protocol, kdjax's
common one. The argument `kd_weight=0` gives the README's "ICKD-C (w/o KL)" row
(`-a 0`); its numbers are in experiments/repro/tables.py's notes.

    python -m kdjax.main --config=configs/ickd_cifar.py:resnet32x4,resnet8x4
    python -m kdjax.main --config=configs/ickd_cifar.py:resnet32x4,resnet8x4,kd_weight=0
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"
SETTINGS = {"ickd.ce_weight": 1.0, "ickd.kd_weight": 1.0, "ickd.ickd_weight": 2.5, "ickd.temperature": 4.0}
PAIRS = {pair: dict(SETTINGS) for pair in (
    "wrn_40_2,wrn_16_2", "wrn_40_2,wrn_40_1", "resnet56,resnet20", "resnet110,resnet20",
    "resnet110,resnet32", "resnet32x4,resnet8x4", "vgg13,vgg8")}


def get_config(arg: str = DEFAULT_PAIR):
  """ICKD-C config for `teacher,student[,kd_weight=W]`."""
  a = recipes.parse_arg(arg or DEFAULT_PAIR, positional=("teacher", "student"), kd_weight=1.0)
  c = recipes.distill_config("ickd", f"{a.teacher},{a.student}", DEFAULT_PAIR, PAIRS)
  c.ickd.kd_weight = a.kd_weight
  return c
