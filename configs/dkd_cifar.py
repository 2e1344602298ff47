"""DKD (Zhao et al., CVPR 2022) on CIFAR-100, the pairs of mdistiller's configs.

alpha=1, T=4, CE weight 1, warmup 20 epochs (counted from 1), beta per pair
(mdistiller `configs/cifar100/dkd/*.yaml`); the common protocol in
kdjax/recipes.py. The published top-1 (experiments/repro/tables.py) is mdistiller's README (best epoch, mean of 5 runs).

    python -m kdjax.main --config=configs/dkd_cifar.py:resnet32x4,resnet8x4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"

PAIRS = {
    "resnet56,resnet20": {"dkd.beta": 2.0},
    "resnet110,resnet32": {"dkd.beta": 2.0},
    "resnet32x4,resnet8x4": {"dkd.beta": 8.0},
    "wrn_40_2,wrn_16_2": {"dkd.beta": 6.0},
    "wrn_40_2,wrn_40_1": {"dkd.beta": 6.0},
    "vgg13,vgg8": {"dkd.beta": 6.0},
    "resnet32x4,ShuffleV1": {"dkd.beta": 8.0},
    "wrn_40_2,ShuffleV1": {"dkd.beta": 8.0},
    "resnet32x4,ShuffleV2": {"dkd.beta": 8.0},
    "vgg13,MobileNetV2": {"dkd.beta": 6.0},
    "ResNet50,MobileNetV2": {"dkd.beta": 8.0},
}


def get_config(pair: str = DEFAULT_PAIR):
  """DKD config for `teacher,student`."""
  return recipes.distill_config("dkd", pair, DEFAULT_PAIR, PAIRS)
