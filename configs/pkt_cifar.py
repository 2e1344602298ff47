"""PKT (Passalis & Tefas, ECCV 2018) on CIFAR-100, every pair of the CRD benchmark.

Published settings: pooled features, CE weight 1, PKT weight 30000
(mdistiller `cfg.PKT`, RepDistiller `--distill pkt -a 0 -b 30000`);
no logit KD term; the common protocol in kdjax/recipes.py.
REPORTED is RepDistiller's README (the CRD paper's table; last epoch).

    python -m kdjax.main --config=configs/pkt_cifar.py:resnet32x4,resnet8x4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"

REPORTED = {
    "resnet56,resnet20": 70.34, "resnet110,resnet20": 70.25, "resnet110,resnet32": 72.61,
    "resnet32x4,resnet8x4": 73.64, "wrn_40_2,wrn_16_2": 74.54, "wrn_40_2,wrn_40_1": 73.45,
    "vgg13,vgg8": 72.88, "vgg13,MobileNetV2": 67.13, "ResNet50,MobileNetV2": 66.52,
    "ResNet50,vgg8": 73.01, "resnet32x4,ShuffleV1": 74.10, "resnet32x4,ShuffleV2": 74.69,
    "wrn_40_2,ShuffleV1": 73.89,
}

# teacher,student -> overrides of the common recipe (none: one setting for every pair).
PAIRS = {pair: {} for pair in REPORTED}


def get_config(pair: str = DEFAULT_PAIR):
  """PKT config for `teacher,student`."""
  return recipes.distill_config("pkt", pair, DEFAULT_PAIR, PAIRS)
