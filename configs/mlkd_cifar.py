"""MLKD (Jin et al., CVPR 2023) on CIFAR-100: the pairs of the logit-standardization release's MLKD rows.

MLKD's release (docs/sources.md [S13]) trains with its `AugTrainer`: a weak (crop + flip) and a
strong (crop + flip + RandAugment(2) + Cutout) view of every batch, mdistiller's KD defaults (T = 4,
CE 0.1, KD 0.9), batch 64, LR x0.1 at 150/180/210, weight decay 5e-4, and per pair an LR and a
length: 240 epochs at LR 0.025 for same-family pairs, 480 or 960 at LR 0.01 for MobileNetV2 and
ShuffleNet students (its `configs/cifar100/ours/*.yaml`). The pairs its release has no yaml for
take the logit-standardization release's MLKD yaml (docs/sources.md [S5]: 480 epochs, 960 for
ShuffleNets). Arguments:
  `ls_protocol`: every pair on that release's yaml (480/960 epochs);
  `ls`: MLKD + logit standardization as that release runs it (its yaml, CE 0.1, base temperature
        and KD weight from its log names: 2 and 9, or 6 for three pairs).
The published top-1 (experiments/repro/recent.py) is the LS release README's MLKD row, which does
not say which protocol produced it; its MLKD+LS row is in the notes.

    python -m kdjax.main --config=configs/mlkd_cifar.py:resnet32x4,resnet8x4
    python -m kdjax.main --config=configs/mlkd_cifar.py:resnet32x4,resnet8x4,ls
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"
# pair -> (epochs, LR) of MLKD's own yaml, or None where it has none.
RELEASE = {
    "resnet32x4,resnet8x4": (240, 0.025), "vgg13,vgg8": (240, 0.025), "wrn_40_2,wrn_40_1": (240, 0.025),
    "wrn_40_2,wrn_16_2": (240, 0.025), "resnet56,resnet20": (240, 0.025), "resnet110,resnet32": (240, 0.025),
    "resnet110,resnet20": None, "resnet32x4,ShuffleV2": (960, 0.01), "resnet32x4,wrn_16_2": None,
    "resnet32x4,wrn_40_2": None, "wrn_40_2,resnet8x4": None, "wrn_40_2,MobileNetV2": None,
    "vgg13,MobileNetV2": (480, 0.01), "ResNet50,MobileNetV2": (480, 0.01),
}
# pair -> (epochs, LR) of the logit-standardization release's MLKD yaml.
LS_PROTOCOL = {
    "resnet32x4,resnet8x4": (480, 0.025), "vgg13,vgg8": (480, 0.01), "wrn_40_2,wrn_40_1": (480, 0.025),
    "wrn_40_2,wrn_16_2": (480, 0.025), "resnet56,resnet20": (480, 0.025), "resnet110,resnet32": (480, 0.025),
    "resnet110,resnet20": (480, 0.025), "resnet32x4,ShuffleV2": (960, 0.01), "resnet32x4,wrn_16_2": (480, 0.025),
    "resnet32x4,wrn_40_2": (480, 0.025), "wrn_40_2,resnet8x4": (480, 0.025), "wrn_40_2,MobileNetV2": (480, 0.005),
    "vgg13,MobileNetV2": (480, 0.01), "ResNet50,MobileNetV2": (480, 0.01),
}
# MLKD+LS (base temperature, KD weight) from the LS release's log names (2, 9 where it links no log).
LS_SETTINGS = {pair: (2.0, 6.0 if pair in ("vgg13,vgg8", "resnet32x4,ShuffleV2", "vgg13,MobileNetV2") else 9.0)
               for pair in LS_PROTOCOL}
PAIRS = {pair: {"mlkd.temperature": 4.0, "mlkd.ce_weight": 0.1, "mlkd.kd_weight": 0.9} for pair in LS_PROTOCOL}


def get_config(arg: str = DEFAULT_PAIR):
  """MLKD config for `teacher,student[,ls_protocol|ls]`."""
  a = recipes.parse_arg(arg or DEFAULT_PAIR, positional=("teacher", "student"), ls_protocol=False, ls=False)
  pair = f"{a.teacher},{a.student}"
  c = recipes.distill_config("mlkd", pair, DEFAULT_PAIR, PAIRS)
  c.epochs, c.optim.lr = RELEASE[pair] if RELEASE[pair] and not (a.ls or a.ls_protocol) else LS_PROTOCOL[pair]
  if a.ls:
    c.mlkd.logit_standardization = True
    c.mlkd.temperature, c.mlkd.kd_weight = LS_SETTINGS[pair]
  return c
