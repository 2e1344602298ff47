"""PKT (Passalis & Tefas, ECCV 2018) on CIFAR-100, every pair of the CRD benchmark.

Published settings: pooled features, CE weight 1, PKT weight 30000
(mdistiller `cfg.PKT`, RepDistiller `--distill pkt -a 0 -b 30000`);
no logit KD term; the common protocol in kdjax/recipes.py.
The published top-1 (experiments/repro/tables.py) is RepDistiller's README (the CRD paper's table; last epoch).

    python -m kdjax.main --config=configs/pkt_cifar.py:resnet32x4,resnet8x4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"


# teacher,student -> overrides of the common recipe (none: one setting for every pair).
PAIRS = {pair: {} for pair in recipes.CRD_BENCHMARK_PAIRS}


def get_config(pair: str = DEFAULT_PAIR):
  """PKT config for `teacher,student`."""
  return recipes.distill_config("pkt", pair, DEFAULT_PAIR, PAIRS)
