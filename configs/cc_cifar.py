"""CC (Peng et al., ICCV 2019) on CIFAR-100, every pair of the CRD benchmark.

Published settings: pooled features through 128-d linear embeddings, CE weight 1, CC weight 0.02
(RepDistiller `--distill correlation -a 0 -b 0.02`; not in mdistiller);
no logit KD term; the common protocol in kdjax/recipes.py.
The published top-1 (experiments/repro/tables.py) is RepDistiller's README (the CRD paper's table; last epoch).

    python -m kdjax.main --config=configs/cc_cifar.py:resnet32x4,resnet8x4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"


# teacher,student -> overrides of the common recipe (none: one setting for every pair).
PAIRS = {pair: {} for pair in recipes.CRD_BENCHMARK_PAIRS}


def get_config(pair: str = DEFAULT_PAIR):
  """CC config for `teacher,student`."""
  return recipes.distill_config("cc", pair, DEFAULT_PAIR, PAIRS)
