"""OFD (Heo et al., ICCV 2019) on CIFAR-100, the pairs the DKD paper reports it for.

Published settings (mdistiller `cfg.OFD`, `configs/cifar100/ofd.yaml`): CE weight 1, OFD
weight 0.001, 1x1 connectors, pre-ReLU stage outputs, margins from the teacher's
BatchNorms; no logit KD term; the common protocol in kdjax/recipes.py. mdistiller runs the
teacher's BatchNorms in train mode for OFD (batch statistics), which is the method's
default `ofd.teacher_bn_mode = 'batch_stats'` (`--config.ofd.teacher_bn_mode=eval` for the
usual frozen teacher).

The published top-1 (experiments/repro/tables.py) is the DKD paper's tables (mdistiller runs; mdistiller reports the best epoch).
Entries listed in its UNCONFIRMED (experiments/repro/tables.py) are single readings of the DKD paper not confirmed by a
second copy (docs/methods.md §7.9 ⚠); the others are confirmed by the ND README. No OFD number
exists for resnet110,resnet20 or ResNet50,vgg8, so those pairs are not listed.

    python -m kdjax.main --config=configs/ofd_cifar.py:resnet32x4,resnet8x4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"


_PAIR_NAMES = (
    'resnet56,resnet20',
    'resnet110,resnet32',
    'resnet32x4,resnet8x4',
    'wrn_40_2,wrn_16_2',
    'wrn_40_2,wrn_40_1',
    'vgg13,vgg8',
    'resnet32x4,ShuffleV1',
    'wrn_40_2,ShuffleV1',
    'vgg13,MobileNetV2',
    'ResNet50,MobileNetV2',
    'resnet32x4,ShuffleV2',
)
# teacher,student -> overrides of the common recipe (none: one setting for every pair).
PAIRS = {pair: {} for pair in _PAIR_NAMES}


def get_config(pair: str = DEFAULT_PAIR):
  """OFD config for `teacher,student` (teacher BN in train mode, as mdistiller: the method's default)."""
  return recipes.distill_config("ofd", pair, DEFAULT_PAIR, PAIRS)
