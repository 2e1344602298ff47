"""AT (Zagoruyko & Komodakis, ICLR 2017) on CIFAR-100, every pair of the CRD benchmark.

Published settings: p = 2 on stages 1-3, CE weight 1, AT weight 1000
(mdistiller `cfg.AT`, RepDistiller `--distill attention -a 0 -b 1000`);
no logit KD term; the common protocol in kdjax/recipes.py.
REPORTED is RepDistiller's README (the CRD paper's table; last epoch).

    python -m kdjax.main --config=configs/at_cifar.py:resnet32x4,resnet8x4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"

REPORTED = {
    "resnet56,resnet20": 70.55, "resnet110,resnet20": 70.22, "resnet110,resnet32": 72.31,
    "resnet32x4,resnet8x4": 73.44, "wrn_40_2,wrn_16_2": 74.08, "wrn_40_2,wrn_40_1": 72.77,
    "vgg13,vgg8": 71.43, "vgg13,MobileNetV2": 59.40, "ResNet50,MobileNetV2": 58.58,
    "ResNet50,vgg8": 71.84, "resnet32x4,ShuffleV1": 71.73, "resnet32x4,ShuffleV2": 72.73,
    "wrn_40_2,ShuffleV1": 73.32,
}

# teacher,student -> overrides of the common recipe (none: one setting for every pair).
PAIRS = {pair: {} for pair in REPORTED}


def get_config(pair: str = DEFAULT_PAIR):
  """AT config for `teacher,student`."""
  return recipes.distill_config("at", pair, DEFAULT_PAIR, PAIRS)
