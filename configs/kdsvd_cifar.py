"""KDSVD (Lee, Kim, Song, ECCV 2018) on CIFAR-100, as mdistiller configures it.

Published settings (mdistiller `cfg.KDSVD`, `configs/cifar100/kdsvd.yaml`): CE weight 1,
KDSVD weight 1, k = 1 (teacher) / k + 3 (student) singular vectors of the stage 1-3
outputs; no logit KD term; the common protocol in kdjax/recipes.py.

No CIFAR-100 number has been published for KDSVD (neither RepDistiller's nor mdistiller's
README has one), so experiments/repro/tables.py records none and the method has no column in README's table.
The only pair a reference configures is mdistiller's resnet32x4 -> resnet8x4. The
reference's singular vectors live on the map width, so a teacher and student stage must
have equally wide maps (true for the same-family CIFAR pairs; other pairs are refused).

    python -m kdjax.main --config=configs/kdsvd_cifar.py:resnet32x4,resnet8x4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"


# teacher,student -> overrides of the common recipe.
PAIRS = {"resnet32x4,resnet8x4": {}}


def get_config(pair: str = DEFAULT_PAIR):
  """KDSVD config for `teacher,student`."""
  return recipes.distill_config("kdsvd", pair, DEFAULT_PAIR, PAIRS)
