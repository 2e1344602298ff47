"""SRD / SRRL (Yang et al., ICLR 2021) on CIFAR-100, the pairs of SimKD's release.

The CIFAR recipe is the one SimKD's release (docs/sources.md [S11]) runs for SRRL: CE weight 1,
KD weight 1 at T = 4 (its fixed `-c 1 -d 1`), SRRL weight 1 (`-b 1`), the connector on the
student's pooled feature and the teacher's classifier reused (kdjax/methods/srd.py,
docs/methods.md §7.18), and RepDistiller's protocol, kdjax's common one. The published
top-1 are SimKD's own SRRL runs from its README (its teacher and baselines, not the SRRL
paper's; experiments/repro/recent.py); its third column, ShuffleNetV2x1.5, is not in the zoo.

    python -m kdjax.main --config=configs/srd_cifar.py:resnet32x4,resnet8x4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"
SETTINGS = {"srd.ce_weight": 1.0, "srd.kd_weight": 1.0, "srd.srd_weight": 1.0, "srd.temperature": 4.0}
PAIRS = {pair: dict(SETTINGS) for pair in ("resnet32x4,resnet8x4", "resnet32x4,vgg8")}


def get_config(pair: str = DEFAULT_PAIR):
  """SRD config for `teacher,student`."""
  return recipes.distill_config("srd", pair, DEFAULT_PAIR, PAIRS)
