"""CRD (Tian, Krishnan, Isola, ICLR 2020) on CIFAR-100, every pair of the CRD benchmark.

Published settings (RepDistiller `--distill crd -a 0 -b 0.8`, mdistiller `cfg.CRD`):
CE weight 1, CRD weight 0.8, embedding dim 128, K = 16384 negatives from other classes,
temperature 0.07, memory momentum 0.5, 'exact' positives; no logit KD term; the common
protocol in kdjax/recipes.py. The memory banks hold one 128-d row per training image per
side (2 x 50,000 x 128 on CIFAR-100) in the method state (checkpointed).
REPORTED is RepDistiller's README (the CRD paper's table; last epoch).

    python -m kdjax.main --config=configs/crd_cifar.py:resnet32x4,resnet8x4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"

REPORTED = {
    "resnet56,resnet20": 71.16, "resnet110,resnet20": 71.46, "resnet110,resnet32": 73.48,
    "resnet32x4,resnet8x4": 75.51, "wrn_40_2,wrn_16_2": 75.48, "wrn_40_2,wrn_40_1": 74.14,
    "vgg13,vgg8": 73.94, "vgg13,MobileNetV2": 69.73, "ResNet50,MobileNetV2": 69.11,
    "ResNet50,vgg8": 74.30, "resnet32x4,ShuffleV1": 75.11, "resnet32x4,ShuffleV2": 75.65,
    "wrn_40_2,ShuffleV1": 76.05,
}

REPORTED_METRIC = "last"

# teacher,student -> overrides of the common recipe (none: one setting for every pair).
PAIRS = {pair: {} for pair in REPORTED}


def get_config(pair: str = DEFAULT_PAIR):
  """CRD config for `teacher,student`."""
  return recipes.distill_config("crd", pair, DEFAULT_PAIR, PAIRS)
