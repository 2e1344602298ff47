"""WKD (Lv et al., NeurIPS 2024) on CIFAR-100: WKD-L, WKD-F or both, the release's two pairs.

The release (docs/sources.md [S12]) ships `configs/cifar100/{wkd_l,wkd_f,wkd_lf}/*.yaml`: CE weight
1, the loss weights decayed by a cosine after epoch 150, the common protocol (batch 64, 240
epochs, LR 0.05 / 0.01 for ShuffleV1, x0.1 at 150/180/210, weight decay 5e-4); per variant and
pair the values in `SETTINGS` (kdjax/methods/wkd.py, docs/methods.md §1.6). The argument picks
the variant: `l` (default), `f`, `lf`. WKD-L's cost between categories is here 1 - cosine of
the teacher's classifier rows (the release's `fc` option); the release's CIFAR numbers use its
CKA-based cost files (`wkd_cost_matrix/cifar100/<teacher>/linear_cka.pth`), which kdjax does not
ship: save one as a 100 x 100 .npy and pass `--config.wkd.cost_matrix_path=...` to use it.

    python -m kdjax.main --config=configs/wkd_cifar.py:resnet32x4,resnet8x4
    python -m kdjax.main --config=configs/wkd_cifar.py:wrn_40_2,ShuffleV1,lf
"""
from kdjax import recipes
from kdjax.errors import UserError

DEFAULT_PAIR = "resnet32x4,resnet8x4"
VARIANTS = ("l", "f", "lf")
# variant -> pair -> config.wkd values (the release's yaml files).
SETTINGS = {
    "l": {"resnet32x4,resnet8x4": dict(logit_weight=600.0, feat_weight=0.0, temperature=8.0),
          "wrn_40_2,ShuffleV1": dict(logit_weight=200.0, feat_weight=0.0, temperature=6.0)},
    "f": {"resnet32x4,resnet8x4": dict(logit_weight=0.0, feat_weight=0.08, mean_cov_ratio=4.0, grid=1),
          "wrn_40_2,ShuffleV1": dict(logit_weight=0.0, feat_weight=0.3, mean_cov_ratio=3.0, grid=4)},
    "lf": {"resnet32x4,resnet8x4": dict(logit_weight=200.0, feat_weight=0.08, temperature=8.0, mean_cov_ratio=8.0,
                                        grid=1),
           "wrn_40_2,ShuffleV1": dict(logit_weight=60.0, feat_weight=0.5, temperature=4.0, mean_cov_ratio=3.0,
                                      grid=4)},
}
PAIRS = {pair: {f"wkd.{k}": v for k, v in values.items()} for pair, values in SETTINGS["l"].items()}


def get_config(arg: str = DEFAULT_PAIR):
  """WKD config for `teacher,student[,l|f|lf]`."""
  a = recipes.parse_arg(arg or DEFAULT_PAIR, positional=("teacher", "student", "variant"))
  variant = a.variant or "l"
  if variant not in VARIANTS:
    raise UserError(f"WKD variant {variant!r}; valid: {', '.join(VARIANTS)}.")
  pair = f"{a.teacher},{a.student}"
  c = recipes.distill_config("wkd", pair, DEFAULT_PAIR, PAIRS)
  for key, value in SETTINGS[variant][pair].items():
    c.wkd[key] = value
  return c
