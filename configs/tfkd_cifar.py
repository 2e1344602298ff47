"""Tf-KD (Yuan et al., CVPR 2020) on CIFAR-100: self-training and the virtual teacher, on kdjax's zoo.

Tf-KD_self distils a student from its own architecture trained normally first (the pair
`X,X`: kdjax auto-trains that teacher); the argument `reg` gives Tf-KD_reg, the virtual
teacher (no teacher network; the pair's teacher is ignored). The release (docs/sources.md
[S10]) tunes alpha, T and the loss multiplier per network, for its own CIFAR networks
(MobileNetV2 at full width, ShuffleNetV2, ResNet18, GoogLeNet, DenseNet121, ResNeXt29), none of
which is layer for layer a network of kdjax's zoo. Each student here takes the release's
setting of the nearest family (ShuffleNets: its ShuffleNetV2; MobileNetV2: its MobileNetV2; the
ResNets, WRNs and VGGs: its ResNet18), on kdjax's common protocol (batch 64, 240 epochs, LR 0.05
or 0.01, x0.1 at 150/180/210, weight decay 5e-4) rather than the release's (200 epochs, LR 0.1,
batch 128, rotation augmentation). The paper's numbers are for its networks, so no number is
claimed for these (experiments/repro/recent.py).

    python -m kdjax.main --config=configs/tfkd_cifar.py:resnet8x4,resnet8x4
    python -m kdjax.main --config=configs/tfkd_cifar.py:ShuffleV2,ShuffleV2,reg
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet8x4,resnet8x4"
# The release's params.json per network: (self alpha, self T, self multiplier), (reg alpha, reg T, reg multiplier).
FAMILY = {
    "shufflenet": ((0.95, 20.0, 1.0), (0.95, 10.0, 1.0)),
    "mobilenet": ((0.95, 20.0, 1.0), (0.95, 40.0, 1.0)),
    "resnet18": ((0.95, 6.0, 50.0), (0.1, 20.0, 100.0)),
}
STUDENTS = {"resnet20": "resnet18", "resnet32": "resnet18", "resnet8x4": "resnet18", "wrn_16_2": "resnet18",
            "wrn_40_1": "resnet18", "vgg8": "resnet18", "MobileNetV2": "mobilenet", "ShuffleV1": "shufflenet",
            "ShuffleV2": "shufflenet"}
PAIRS = {f"{s},{s}": {"tfkd.mode": "self", "tfkd.alpha": FAMILY[f][0][0], "tfkd.temperature": FAMILY[f][0][1],
                      "tfkd.multiplier": FAMILY[f][0][2]}
         for s, f in STUDENTS.items()}


def get_config(arg: str = DEFAULT_PAIR):
  """Tf-KD_self config for `student,student` (`...,reg`: Tf-KD_reg)."""
  a = recipes.parse_arg(arg or DEFAULT_PAIR, positional=("teacher", "student"), reg=False)
  c = recipes.distill_config("tfkd", f"{a.teacher},{a.student}", DEFAULT_PAIR, PAIRS)
  if a.reg:
    alpha, temperature, multiplier = FAMILY[STUDENTS[a.student]][1]
    c.tfkd.mode, c.tfkd.alpha, c.tfkd.temperature, c.tfkd.multiplier = "reg", alpha, temperature, multiplier
    c.teacher.arch = ""  # no teacher network
  return c
