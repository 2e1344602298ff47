"""RKD (Park et al., CVPR 2019) on CIFAR-100, every pair of the CRD benchmark.

Published settings: pooled features, CE weight 1, RKD weight 1 (distance 25, angle 50)
(mdistiller `cfg.RKD`, RepDistiller `--distill rkd -a 0 -b 1`);
no logit KD term; the common protocol in kdjax/recipes.py.
REPORTED is RepDistiller's README (the CRD paper's table; last epoch).

    python -m kdjax.main --config=configs/rkd_cifar.py:resnet32x4,resnet8x4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"

REPORTED = {
    "resnet56,resnet20": 69.61, "resnet110,resnet20": 69.25, "resnet110,resnet32": 71.82,
    "resnet32x4,resnet8x4": 71.90, "wrn_40_2,wrn_16_2": 73.35, "wrn_40_2,wrn_40_1": 72.22,
    "vgg13,vgg8": 71.48, "vgg13,MobileNetV2": 64.52, "ResNet50,MobileNetV2": 64.43,
    "ResNet50,vgg8": 71.50, "resnet32x4,ShuffleV1": 72.28, "resnet32x4,ShuffleV2": 73.21,
    "wrn_40_2,ShuffleV1": 72.21,
}

# teacher,student -> overrides of the common recipe (none: one setting for every pair).
PAIRS = {pair: {} for pair in REPORTED}


def get_config(pair: str = DEFAULT_PAIR):
  """RKD config for `teacher,student`."""
  return recipes.distill_config("rkd", pair, DEFAULT_PAIR, PAIRS)
