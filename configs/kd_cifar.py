"""KD (Hinton et al. 2015) on CIFAR-100, every pair of the CRD benchmark.

mdistiller/RepDistiller settings: T=4, CE weight 0.1, KD weight 0.9; the common
protocol in kdjax/recipes.py. REPORTED is the CRD paper's top-1 (last epoch; the
DKD paper reuses it).

    python -m kdjax.main --config=configs/kd_cifar.py:resnet32x4,resnet8x4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"

# teacher,student -> overrides of the common recipe (none: KD uses one setting).
PAIRS = {
    "resnet56,resnet20": {},
    "resnet110,resnet20": {},
    "resnet110,resnet32": {},
    "resnet32x4,resnet8x4": {},
    "wrn_40_2,wrn_16_2": {},
    "wrn_40_2,wrn_40_1": {},
    "vgg13,vgg8": {},
    "vgg13,MobileNetV2": {},
    "ResNet50,MobileNetV2": {},
    "ResNet50,vgg8": {},
    "resnet32x4,ShuffleV1": {},
    "resnet32x4,ShuffleV2": {},
    "wrn_40_2,ShuffleV1": {},
}

REPORTED = {
    "resnet56,resnet20": 70.66, "resnet110,resnet20": 70.67, "resnet110,resnet32": 73.08,
    "resnet32x4,resnet8x4": 73.33, "wrn_40_2,wrn_16_2": 74.92, "wrn_40_2,wrn_40_1": 73.54,
    "vgg13,vgg8": 72.98, "vgg13,MobileNetV2": 67.37, "ResNet50,MobileNetV2": 67.35,
    "ResNet50,vgg8": 73.81, "resnet32x4,ShuffleV1": 74.07, "resnet32x4,ShuffleV2": 74.45,
    "wrn_40_2,ShuffleV1": 74.83,
}


def get_config(pair: str = DEFAULT_PAIR):
  """KD config for `teacher,student`."""
  return recipes.distill_config("kd", pair, DEFAULT_PAIR, PAIRS)
