"""SimKD (Chen et al., CVPR 2022) on CIFAR-100, the zoo's pairs of its release's table.

The release (docs/sources.md [S11]) trains the projector and the student on the feature loss
alone (`-c 0 -d 0 -b 1`), factor 2, with RepDistiller's protocol (kdjax's common one), and
predicts through the teacher's classifier (kdjax/methods/simkd.py, docs/methods.md §7.19). The
argument `factor=F` gives its README's other projector widths (F = 4, 8). The published top-1
(experiments/repro/recent.py) are its README's: its own teacher, baselines and runs; its third
column, ShuffleNetV2x1.5, is not in the zoo.

    python -m kdjax.main --config=configs/simkd_cifar.py:resnet32x4,resnet8x4
    python -m kdjax.main --config=configs/simkd_cifar.py:resnet32x4,vgg8,factor=4
"""
from kdjax import recipes

DEFAULT_PAIR = "resnet32x4,resnet8x4"
SETTINGS = {"simkd.factor": 2, "simkd.feat_weight": 1.0, "simkd.ce_weight": 0.0, "simkd.kd_weight": 0.0}
PAIRS = {pair: dict(SETTINGS) for pair in ("resnet32x4,resnet8x4", "resnet32x4,vgg8")}


def get_config(arg: str = DEFAULT_PAIR):
  """SimKD config for `teacher,student[,factor=F]`."""
  a = recipes.parse_arg(arg or DEFAULT_PAIR, positional=("teacher", "student"), factor=2)
  c = recipes.distill_config("simkd", f"{a.teacher},{a.student}", DEFAULT_PAIR, PAIRS)
  c.simkd.factor = a.factor
  return c
