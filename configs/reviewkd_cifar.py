"""ReviewKD (Chen et al., CVPR 2021) on CIFAR-100, the pairs its paper reports.

Method settings are the official release's (`dvlab-research/ReviewKD`,
`CIFAR-100/train.py` and `script/reviewKD.sh`): CE weight 1, feature-loss weight
λ per pair (`reviewkd.weight`), warmup min(epoch / 20, 1) with the release's
0-indexed epoch (factor 0 during the first epoch), C_mid = min(512, deepest student
channels); see kdjax/methods/reviewkd.py. The published top-1 (experiments/repro/tables.py) is the paper's top-1 (best
epoch of the release's own recipe and its own teachers).

Training recipe. By default this config uses the common CRD/mdistiller protocol of
kdjax/recipes.py (batch 64, LR 0.05 / 0.01 for ShuffleNet and MobileNet students,
plain momentum, LR x0.1 from 0-indexed epochs 150/180/210, teacher BN in eval mode),
so ReviewKD is compared with the other kdjax methods under one recipe. The official
release trains differently:

* batch 128 (last short batch kept), LR 0.1 (0.02 for ShuffleNet/MobileNet
  students), SGD with Nesterov momentum 0.9, weight decay 5e-4;
* LR x0.1 one epoch later than the common protocol (after 0-indexed epoch 150,
  i.e. from 0-indexed epochs 151/181/211 on);
* the teacher's BatchNorms in train mode (batch statistics) during distillation;
* CIFAR-10 normalisation constants (mean (125.3, 123.0, 113.9)/255, std
  (63.0, 62.1, 66.7)/255) instead of CIFAR-100's;
* its own teachers (trained with the same recipe), a random seed, best-epoch report.

Append `,official` to the pair to get the release's batch, LR, Nesterov, LR
milestones (also for an auto-trained teacher) and teacher BatchNorm in train mode,
equivalent to `--config.batch_size=128 --config.optim.lr=0.1
--config.optim.nesterov=True --config.optim.lr_milestones="(151,181,211)"
--config.reviewkd.teacher_bn_mode=batch_stats`. The CIFAR-10 constants are not a config
option of kdjax's data pipeline, so even `,official` differs from the release there;
the kept short batch and the random seed are also not reproduced.

λ for vgg13,vgg8 / vgg13,MobileNetV2 / ResNet50,MobileNetV2 was never published
(the release's CIFAR code cannot build those students); those pairs use the
release's `--kd-loss-weight` default 1.0 and are listed in UNPUBLISHED_WEIGHT. The
vgg13,MobileNetV2 number (70.37) has a single third-party source. ResNet50,vgg8
is left out: its only ReviewKD number (SDD Table 2) is a suspected copy error.

Ablations. Append an ABLATIONS name to get one ablation of the ML Reproducibility
Challenge report on ReviewKD (docs/sources.md [S0]; docs/methods.md §3.6) as overrides of the
method's switches (kdjax/methods/reviewkd.py): `release` (the baseline: the official
configuration, no override), `no_abf`, `feed_output`, `hcl_full_4`,
`hcl_equal_weights`, `no_hcl`, `no_review`, `rlf_only`, `none`. The order of
`experiments/reproduce.py --table=reviewkd_ablation` and the report's numbers are in
experiments/repro/tables.py (its component table is on resnet56,resnet20 only, with λ = 0.7
where this config uses the release's 0.6; for the other pairs it gives only the full
method's reproduction).

    python -m kdjax.main --config=configs/reviewkd_cifar.py:resnet32x4,resnet8x4
    python -m kdjax.main --config=configs/reviewkd_cifar.py:resnet32x4,resnet8x4,official
    python -m kdjax.main --config=configs/reviewkd_cifar.py:wrn_40_2,wrn_16_2,no_abf
"""
from kdjax import recipes
from kdjax.errors import UserError

DEFAULT_PAIR = "resnet32x4,resnet8x4"

# teacher,student -> overrides; λ from the release's `CIFAR-100/script/reviewKD.sh`.
PAIRS = {
    "resnet56,resnet20": {"reviewkd.weight": 0.6},
    "resnet110,resnet32": {"reviewkd.weight": 1.0},
    "resnet32x4,resnet8x4": {"reviewkd.weight": 5.0},
    "wrn_40_2,wrn_16_2": {"reviewkd.weight": 5.0},
    "wrn_40_2,wrn_40_1": {"reviewkd.weight": 5.0},
    "wrn_40_2,ShuffleV1": {"reviewkd.weight": 5.0},
    "resnet32x4,ShuffleV1": {"reviewkd.weight": 5.0},
    "resnet32x4,ShuffleV2": {"reviewkd.weight": 8.0},
    # λ unpublished: the release's default --kd-loss-weight.
    "vgg13,vgg8": {"reviewkd.weight": 1.0},
    "vgg13,MobileNetV2": {"reviewkd.weight": 1.0},
    "ResNet50,MobileNetV2": {"reviewkd.weight": 1.0},
}

UNPUBLISHED_WEIGHT = frozenset({"vgg13,vgg8", "vgg13,MobileNetV2", "ResNet50,MobileNetV2"})


# Ablation variant -> config overrides (the switches of kdjax/methods/reviewkd.py). MLRC names its
# component table's rows by what is added to a per-level FitNets-like baseline: none (no review, no
# ABF, single MSE), +RLF (the review's residual fusion, plain sum), +ABF (RLF with attention, single
# MSE), +HCL without ABF (RLF with the plain sum and HCL), all (the release).
ABLATIONS = {
    "release": {},                                                       # MLRC "all"
    "no_abf": {"reviewkd.abf": False},                                   # MLRC "+ HCL (without ABF)"
    "feed_output": {"reviewkd.feed": "output"},                          # the ABF output feeds the next level
    "hcl_full_4": {"reviewkd.hcl_levels": (0, 4)},                       # a shorter pyramid
    "hcl_equal_weights": {"reviewkd.hcl_weights": (1.0, 1.0, 1.0, 1.0)},  # no halving
    "no_hcl": {"reviewkd.hcl_levels": (0,)},                             # MLRC "+ ABF"
    "no_review": {"reviewkd.review": False},                             # level j <-> teacher level j only
    "rlf_only": {"reviewkd.abf": False, "reviewkd.hcl_levels": (0,)},    # MLRC "+ RLF"
    "none": {"reviewkd.review": False, "reviewkd.abf": False, "reviewkd.hcl_levels": (0,)},  # MLRC "none"
}
ABLATION_BASELINE = "release"

OFFICIAL_BATCH_SIZE = 128
OFFICIAL_LR_MILESTONES = (151, 181, 211)


def official_lr(student: str) -> float:
  """The release's LR: 0.02 for ShuffleNet/MobileNet students, else 0.1."""
  return 0.02 if student in recipes.SMALL_LR_STUDENTS else 0.1


def _split_recipe(arg: str | None) -> tuple[str, bool, str]:
  """'teacher,student[,official][,ablation]' -> ('teacher,student', official?, ablation or 'release')."""
  try:
    a = recipes.parse_arg(arg or DEFAULT_PAIR, positional=("teacher", "student"), official=False,
                          **{name: False for name in ABLATIONS})
  except UserError as e:
    a, error = None, str(e)
  chosen = [name for name in ABLATIONS if a is not None and a[name]]
  if a is None or len(chosen) > 1:
    raise UserError(f"unknown recipe in {arg!r}; append ',official' for the release's recipe or "
                    f"nothing for the common protocol, and/or one ablation of {', '.join(ABLATIONS)}"
                    + (f" ({error})" if a is None else "") + ".")
  return f"{a.teacher},{a.student}", bool(a.official), (chosen or [ABLATION_BASELINE])[0]


def get_config(arg: str = DEFAULT_PAIR):
  """ReviewKD config for `teacher,student[,official][,ablation]` (the release's optimiser; an ablation)."""
  pair, official, ablation = _split_recipe(arg)
  c = recipes.distill_config("reviewkd", pair, DEFAULT_PAIR, PAIRS)
  for key, value in ABLATIONS[ablation].items():
    node, field = key.split(".")
    c[node][field] = value
  if official:
    c.batch_size = OFFICIAL_BATCH_SIZE
    c.optim.lr = official_lr(c.model)
    c.optim.nesterov = True
    c.optim.lr_milestones = OFFICIAL_LR_MILESTONES
    c.reviewkd.teacher_bn_mode = "batch_stats"  # the release never calls teacher.eval()
    # The release trains its teachers with the same script (`script/baseline.sh`).
    c.teacher.train_lr = official_lr(c.teacher.arch)
    c.teacher.train_lr_milestones = OFFICIAL_LR_MILESTONES
  return c
