"""KD (Hinton et al. 2015) on CIFAR-100, every pair of the CRD benchmark.

mdistiller/RepDistiller settings: T=4, CE weight 0.1, KD weight 0.9; the common
protocol in kdjax/recipes.py. The published top-1 (experiments/repro/tables.py) is the CRD paper's top-1 (last epoch; the
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


def get_config(pair: str = DEFAULT_PAIR):
  """KD config for `teacher,student`."""
  return recipes.distill_config("kd", pair, DEFAULT_PAIR, PAIRS)
