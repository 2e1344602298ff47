"""SSKD (Xu et al., ECCV 2020) on CIFAR-100, the eleven pairs of its release's table.

The release (docs/sources.md [S14]) trains the teacher's projection head first (60 epochs, LR 0.05,
x0.1 at 30 and 45) and then the student: CE 0.1, KD 0.9 (T = 4), rotated-image KD 2.7 (T = 4),
self-supervision imitation 10 (T = 0.5), error-level ranking ratios 1.0 and 0.75, batch 64 images
(4 x 64 rotated), 240 epochs, LR 0.05 (0.01 for the MobileNetV2 and ShuffleNet students), x0.1 at
150/180/210, weight decay 5e-4 (kdjax/methods/sskd.py, docs/methods.md §7.20). The published top-1
(experiments/repro/recent.py) are its README's, from its own teachers.

    python -m kdjax.main --config=configs/sskd_cifar.py:resnet32x4,resnet8x4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"
PAIRS = {pair: {} for pair in (
    "wrn_40_2,wrn_16_2", "wrn_40_2,wrn_40_1", "resnet56,resnet20", "resnet32x4,resnet8x4", "vgg13,vgg8",
    "vgg13,MobileNetV2", "ResNet50,MobileNetV2", "ResNet50,vgg8", "resnet32x4,ShuffleV1", "resnet32x4,ShuffleV2",
    "wrn_40_2,ShuffleV1")}


def get_config(pair: str = DEFAULT_PAIR):
  """SSKD config for `teacher,student` (the release's defaults for every pair)."""
  return recipes.distill_config("sskd", pair, DEFAULT_PAIR, PAIRS)
