"""SP (Tung & Mori, ICCV 2019) on CIFAR-100, every pair of the CRD benchmark.

Published settings: last-stage map, CE weight 1, SP weight 3000
(mdistiller `cfg.SP`, RepDistiller `--distill similarity -a 0 -b 3000`);
no logit KD term; the common protocol in kdjax/recipes.py.
REPORTED is RepDistiller's README (the CRD paper's table; last epoch).

    python -m kdjax.main --config=configs/sp_cifar.py:resnet32x4,resnet8x4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"

REPORTED = {
    "resnet56,resnet20": 69.67, "resnet110,resnet20": 70.04, "resnet110,resnet32": 72.69,
    "resnet32x4,resnet8x4": 72.94, "wrn_40_2,wrn_16_2": 73.83, "wrn_40_2,wrn_40_1": 72.43,
    "vgg13,vgg8": 72.68, "vgg13,MobileNetV2": 66.30, "ResNet50,MobileNetV2": 68.08,
    "ResNet50,vgg8": 73.34, "resnet32x4,ShuffleV1": 73.48, "resnet32x4,ShuffleV2": 74.56,
    "wrn_40_2,ShuffleV1": 74.52,
}

# teacher,student -> overrides of the common recipe (none: one setting for every pair).
PAIRS = {pair: {} for pair in REPORTED}


def get_config(pair: str = DEFAULT_PAIR):
  """SP config for `teacher,student`."""
  return recipes.distill_config("sp", pair, DEFAULT_PAIR, PAIRS)
