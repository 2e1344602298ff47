"""CRD (Tian, Krishnan, Isola, ICLR 2020) on CIFAR-100, every pair of the CRD benchmark.

Published settings (RepDistiller `--distill crd -a 0 -b 0.8`, mdistiller `cfg.CRD`):
CE weight 1, CRD weight 0.8, embedding dim 128, K = 16384 negatives from other classes,
temperature 0.07, memory momentum 0.5, 'exact' positives; no logit KD term; the common
protocol in kdjax/recipes.py. The memory banks hold one 128-d row per training image per
side (2 x 50,000 x 128 on CIFAR-100) in the method state (checkpointed).
The published top-1 (experiments/repro/tables.py) is RepDistiller's README (the CRD paper's table; last epoch).

    python -m kdjax.main --config=configs/crd_cifar.py:resnet32x4,resnet8x4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"


# teacher,student -> overrides of the common recipe (none: one setting for every pair).
PAIRS = {pair: {} for pair in recipes.CRD_BENCHMARK_PAIRS}


def get_config(pair: str = DEFAULT_PAIR):
  """CRD config for `teacher,student`."""
  return recipes.distill_config("crd", pair, DEFAULT_PAIR, PAIRS)
