"""FSP (Yim et al., CVPR 2017) on CIFAR-100: the CRD benchmark pairs with equal channel counts.

Published settings (RepDistiller `--distill fsp -a 0 -b 50 --init_epochs 30`): a 30-epoch
pre-stage trains the student's feature layers with the FSP loss between consecutive stage maps
(stem included), SGD at the student's LR (constant), momentum 0.9, weight decay 5e-4; then the
common 240-epoch protocol (kdjax/recipes.py) with CE only (RepDistiller's FSP term in the main
loop is 0, so `-b 50` has no effect). FSP needs equal channels stage by stage: no
WRN-40-2 -> WRN-40-1 and no different-architecture pair. The published top-1 (experiments/repro/tables.py) is RepDistiller's README
(the CRD paper's table; last epoch).

    python -m kdjax.main --config=configs/fsp_cifar.py:resnet32x4,resnet8x4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"


_PAIR_NAMES = (
    'resnet56,resnet20',
    'resnet110,resnet20',
    'resnet110,resnet32',
    'resnet32x4,resnet8x4',
    'wrn_40_2,wrn_16_2',
    'vgg13,vgg8',
)
# teacher,student -> overrides of the common recipe (none: one setting for every pair).
PAIRS = {pair: {} for pair in _PAIR_NAMES}


def get_config(pair: str = DEFAULT_PAIR):
  """FSP config for `teacher,student`."""
  return recipes.distill_config("fsp", pair, DEFAULT_PAIR, PAIRS)
