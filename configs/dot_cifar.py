"""DOT (Zhao et al., ICCV 2023) on CIFAR-100: KD (or DKD) trained by the distillation-oriented trainer.

mdistiller's `configs/cifar100/dot/*.yaml` (docs/sources.md [S9]) train KD with its
defaults (T = 4, CE weight 0.1, KD weight 0.9) under the DOT trainer with delta 0.075
around momentum 0.9 (task momentum 0.825, distillation momentum 0.975) and the common
protocol (batch 64, 240 epochs, LR 0.05, 0.01 for the ShuffleNet student, x0.1 at
150/180/210, weight decay 5e-4), for three pairs. The argument `dkd` trains DKD (its
per-pair beta from configs/dkd_cifar.py) under DOT instead; the release publishes no
DKD+DOT recipe, so that variant reuses the same delta and carries no reported number.
The published top-1 (mdistiller README's KD+DOT row) is in experiments/repro/tables.py.

    python -m kdjax.main --config=configs/dot_cifar.py:resnet32x4,resnet8x4
    python -m kdjax.main --config=configs/dot_cifar.py:resnet32x4,resnet8x4,dkd
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"
SETTINGS = {"dot.distiller": "kd", "dot.delta": 0.075, "kd.temperature": 4.0, "kd.ce_weight": 0.1,
            "kd.kd_weight": 0.9}
PAIRS = {pair: dict(SETTINGS) for pair in ("resnet32x4,resnet8x4", "vgg13,vgg8", "resnet32x4,ShuffleV2")}


def get_config(arg: str = DEFAULT_PAIR):
  """KD+DOT config for `teacher,student[,dkd]`."""
  a = recipes.parse_arg(arg or DEFAULT_PAIR, positional=("teacher", "student"), dkd=False)
  pair = f"{a.teacher},{a.student}"
  c = recipes.distill_config("dot", pair, DEFAULT_PAIR, PAIRS)
  if a.dkd:
    dkd = recipes.sibling_config(__file__, "dkd_cifar.py")
    c.dot.distiller = "dkd"
    for key, value in dkd.PAIRS[pair].items():
      node, field = key.split(".")
      c[node][field] = value
  return c
