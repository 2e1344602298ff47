"""DIST (Huang et al., NeurIPS 2022) on CIFAR-100, every pair its release reports.

The release's CIFAR-100 recipe (docs/sources.md [S6]: `dist_cifar.yaml` and the loss
factory of hunto/image_classification_sota) is CE weight 1 plus `kd_loss_weight` 2 times
the DIST loss at T = 4 with its own beta = gamma = 1, i.e. beta = gamma = 2 here
(kdjax/methods/dist.py, docs/methods.md §1.2). Its solver is kdjax's common protocol:
batch 64, 240 epochs, SGD momentum 0.9, weight decay 5e-4, LR 0.05 (0.01 for the
MobileNetV2 and ShuffleNet students, as its README says) constant for 120 epochs and then
x0.1 every 30, i.e. at 150/180/210. The published top-1 (mean ± std of its runs) is in
experiments/repro/tables.py.

    python -m kdjax.main --config=configs/dist_cifar.py:resnet32x4,resnet8x4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"
SETTINGS = {"dist.temperature": 4.0, "dist.beta": 2.0, "dist.gamma": 2.0, "dist.ce_weight": 1.0}
# The six rows of the release README's CIFAR-100 table; one recipe for all.
PAIRS = {pair: dict(SETTINGS) for pair in (
    "wrn_40_2,wrn_40_1", "resnet56,resnet20", "resnet32x4,resnet8x4", "ResNet50,MobileNetV2",
    "resnet32x4,ShuffleV1", "resnet32x4,ShuffleV2")}


def get_config(pair: str = DEFAULT_PAIR):
  """DIST config for `teacher,student`."""
  return recipes.distill_config("dist", pair, DEFAULT_PAIR, PAIRS)
