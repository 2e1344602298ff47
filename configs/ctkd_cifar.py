"""CTKD (Li et al., AAAI 2023) on CIFAR-100: KD with a curriculum-learned global temperature.

The release's CIFAR script (docs/sources.md [S7]: `scripts/run_cifar_distill.sh` and the
defaults of `train_student.py`) trains KD with CE weight 0.1 and KD weight 0.9, the
temperature T = 1 + 20 * sigmoid(theta) from theta = 1 (kdjax/methods/ctkd.py,
docs/methods.md §1.3), the gradient-reversal weight lambda on a cosine from 0 to -1 over
10 epochs, and the common protocol: batch 64, 240 epochs, LR 0.05 (0.01 for MobileNetV2
and ShuffleNet students) x0.1 at 150/180/210, weight decay 5e-4, theta in the same SGD.
One recipe for every pair; the published top-1 is in experiments/repro/tables.py.

    python -m kdjax.main --config=configs/ctkd_cifar.py:resnet56,resnet20
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet56,resnet20"
SETTINGS = {"ctkd.ce_weight": 0.1, "ctkd.kd_weight": 0.9, "ctkd.t_start": 1.0, "ctkd.t_range": 20.0,
            "ctkd.init": 1.0, "ctkd.lambda_max": 0.0, "ctkd.lambda_min": -1.0, "ctkd.loops": 10.0}
# The six pairs of the release README's CIFAR-100 table.
PAIRS = {pair: dict(SETTINGS) for pair in (
    "resnet56,resnet20", "resnet110,resnet32", "resnet110,resnet20", "wrn_40_2,wrn_16_2",
    "wrn_40_2,wrn_40_1", "vgg13,vgg8")}


def get_config(pair: str = DEFAULT_PAIR):
  """CTKD config for `teacher,student`."""
  return recipes.distill_config("ctkd", pair, DEFAULT_PAIR, PAIRS)
