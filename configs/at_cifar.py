"""AT (Zagoruyko & Komodakis, ICLR 2017) on CIFAR-100, every pair of the CRD benchmark.

Published settings: p = 2 on stages 1-3, CE weight 1, AT weight 1000
(mdistiller `cfg.AT`, RepDistiller `--distill attention -a 0 -b 1000`);
no logit KD term; the common protocol in kdjax/recipes.py.
The published top-1 (experiments/repro/tables.py) is RepDistiller's README (the CRD paper's table; last epoch).

    python -m kdjax.main --config=configs/at_cifar.py:resnet32x4,resnet8x4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"


# teacher,student -> overrides of the common recipe (none: one setting for every pair).
PAIRS = {pair: {} for pair in recipes.CRD_BENCHMARK_PAIRS}


def get_config(pair: str = DEFAULT_PAIR):
  """AT config for `teacher,student`."""
  return recipes.distill_config("at", pair, DEFAULT_PAIR, PAIRS)
