"""FT, Factor Transfer (Kim et al., NeurIPS 2018) on CIFAR-100, every pair of the CRD benchmark.

Published settings (RepDistiller `--distill factor -a 0 -b 200 --init_epochs 30`): a 30-epoch
pre-stage trains the paraphraser (rate 0.5) to reconstruct the teacher's last-stage map (MSE),
SGD momentum 0.9, weight decay 5e-4, at LR 0.01 for ResNet/WRN students and the student's LR
otherwise (`helper/pretrain.py`; 0.05 for VGG8, 0.01 for MobileNetV2/ShuffleNet); then the
common 240-epoch protocol (kdjax/recipes.py) with CE 1 + FT 200, the paraphraser frozen and the
translator trained with the student. The published top-1 (experiments/repro/tables.py) is RepDistiller's README (the CRD paper's table;
last epoch).

    python -m kdjax.main --config=configs/ft_cifar.py:resnet32x4,resnet8x4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"


# RepDistiller's `init()` uses LR 0.01 for the paraphraser when the student is a CIFAR ResNet
# or WRN; for the other students `ft.init_lr` = 0 means the run's LR (the student's).
_RESNET_WRN_STUDENT = ("resnet20", "resnet32", "resnet8x4", "wrn_16_2", "wrn_40_1")
PAIRS = {pair: ({"ft.init_lr": 0.01} if pair.split(",")[1] in _RESNET_WRN_STUDENT else {})
         for pair in recipes.CRD_BENCHMARK_PAIRS}


def get_config(pair: str = DEFAULT_PAIR):
  """FT config for `teacher,student`."""
  return recipes.distill_config("ft", pair, DEFAULT_PAIR, PAIRS)
