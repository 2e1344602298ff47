"""AB, Activation Boundaries (Heo et al., AAAI 2019) on CIFAR-100, every pair of the CRD benchmark.

Published settings (RepDistiller `--distill abound -a 0 -b 1 --init_epochs 30`): a 30-epoch
pre-stage trains the connectors and the student's feature layers with the AB loss on the
pre-ReLU stage 1-3 maps (margin 1), SGD at the student's LR (constant), momentum 0.9, weight
decay 5e-4; then the common 240-epoch protocol (kdjax/recipes.py) with CE only (RepDistiller's
AB term in the main loop is 0). The published top-1 (experiments/repro/tables.py) is RepDistiller's README (the CRD paper's table; last
epoch).

    python -m kdjax.main --config=configs/ab_cifar.py:resnet32x4,resnet8x4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"


# teacher,student -> overrides of the common recipe (none: the pre-stage LR is the student's
# LR, 0.05 or 0.01, which distill_config already sets).
PAIRS = {pair: {} for pair in recipes.CRD_BENCHMARK_PAIRS}


def get_config(pair: str = DEFAULT_PAIR):
  """AB config for `teacher,student`."""
  return recipes.distill_config("ab", pair, DEFAULT_PAIR, PAIRS)
