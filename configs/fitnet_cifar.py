"""FitNets (Romero et al., ICLR 2015) on CIFAR-100, every pair of the CRD benchmark.

Published settings: hint layer 2 (post-ReLU stage-2 output), CE weight 1, hint weight 100
(mdistiller `cfg.FITNET`, RepDistiller `--distill hint -a 0 -b 100`);
no logit KD term; the common protocol in kdjax/recipes.py.
The published top-1 (experiments/repro/tables.py) is RepDistiller's README (the CRD paper's table; last epoch).

    python -m kdjax.main --config=configs/fitnet_cifar.py:resnet32x4,resnet8x4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"


# teacher,student -> overrides of the common recipe (none: one setting for every pair).
PAIRS = {pair: {} for pair in recipes.CRD_BENCHMARK_PAIRS}


def get_config(pair: str = DEFAULT_PAIR):
  """FitNets config for `teacher,student`."""
  return recipes.distill_config("fitnet", pair, DEFAULT_PAIR, PAIRS)
