"""A third-party study of DKD on tiny CNNs (docs/sources.md [S4]), CIFAR-10: one config, one variant per row.

The study distills a 5-layer CNN teacher (`simple_cnn_teacher`) into a 4-layer
student (`simple_cnn_student`) on CIFAR-10 and compares no distillation, KD and DKD
at several temperatures and (alpha, beta). The argument names the variant:

    nokd                      the student trained alone (cross-entropy)
    teacher                   the teacher trained alone (the recipe the auto-teacher uses)
    kd_t<T>[_a<alpha>]        KD at temperature T; alpha = KD weight, 1 - alpha = CE weight (default 0.5)
    dkd_t<T>_a<alpha>_b<beta> DKD at temperature T; alpha weights TCKD, beta NCKD (CE weight 1)

e.g. `kd_t5`, `dkd_t1_a0.7_b0.25`: a row name is shorthand for the config grammar
(`recipes.parse_arg`) `kd,t=5` and `dkd,t=1,alpha=0.7,beta=0.25`, which work too. `ROWS` is the study's table (what
`experiments/reproduce.py --table=tiny_cnn_dkd` runs); its numbers are in experiments/repro/tables.py.

    python -m kdjax.main --config=configs/tiny_cnn_cifar10.py:dkd_t1_a0.7_b0.25 --workdir=runs/tiny/dkd
    python -m kdjax.main --config=configs/tiny_cnn_cifar10.py:kd_t1 --config.data.name=digits --workdir=/tmp/t

Protocol. Stated by the study: CIFAR-10, 30 epochs ("otherwise the models overfit"),
batch 64, KD "a=0.5", DKD with (T, a, b). Not stated, chosen here:

* Optimizer: SGD momentum 0.9, LR 0.01 constant (no steps), weight decay 5e-4 (the
  kdjax/CRD default), for teacher and student alike. 0.01 is the CRD protocol's LR for
  its smallest students; the student has no BatchNorm, and at LR 0.05 it is the first
  thing to diverge under strong distillation terms (tests/test_tiny_cnn_dkd.py), while
  30 epochs at 0.01 is a conventional short schedule for such CNNs. No LR steps: the
  study mentions none and 30 epochs leave no room for a 3-step schedule.
* Augmentation: kdjax's CIFAR default (pad-4 random crop, horizontal flip).
* KD's alpha: the study does not define it. In Hinton-style code (and the usual
  PyTorch KD tutorials) alpha weights the soft term and 1 - alpha the CE; either way
  alpha = 0.5 means CE weight 0.5 and KD weight 0.5, which is what this config uses.
  The KD term is T^2 * KL (Hinton; kdjax `kd` method) -- identical at T = 1.
* DKD's alpha/beta are the DKD paper's TCKD/NCKD weights (the study builds on the
  mdistiller code), CE weight 1.
* DKD's LR is LR / T for T > 1 (0.005 at T = 2, 0.0025 at T = 4; T <= 1 keeps 0.01).
  Why: the T^2-scaled KL terms have logit gradient T * (p_s^T - p_t^T), T times a
  bounded residual, and NCKD's lacks KD's (1 - p_t^T) damping (docs/methods.md §2.6,
  mechanism 6), so at a fixed LR the step DKD takes grows linearly in T. Measured on
  digits with the study's trained teacher at T = 4, beta = 2, LR 0.01 (the old
  setting): the gradient norm ran at 20-40, 5-10x the CE term's alone, while the
  BN-free student's weights grew; at step 87 (epoch 4, after the warmup) it spiked
  (norm 112, then 908, 1.5e4, 1e7), logits overflowed float32 by step 92 and the
  NaN guard stopped the run. The DKD loss itself stayed finite until the logits
  were inf (it is log-space, kdjax/methods/dkd.py). This is an optimisation
  instability (mdistiller issue #60: lowering the LR removed the NaN), not a
  numerical one, and scaling the LR by 1/T keeps LR * T, the step on the logits,
  at its T = 1 value. With it, the digits study's T = 2 and T = 4 rows train with
  every loss finite (95.5% best at T = 4; experiments/results/tiny_cnn_dkd_digits),
  and T = 2, 4, 8 stay finite in tests/test_tiny_cnn_dkd.py; at LR 0.01 the same
  30-epoch teacher also made T = 8 diverge (step 62). KD rows keep 0.01 (its T^2 KL
  is damped by 1 - p_t^T and weighted 0.5; it trained at T = 5). Warmup: mdistiller ramps the DKD term over 20 of 240
  epochs; here the same fraction of 30 epochs, 2.5 epochs (a 20-epoch ramp would cover
  two thirds of this schedule).
* Teacher: `simple_cnn_teacher` with the same optimizer for 30 epochs, trained once per
  dataset into `runs/teachers/{dataset}_simple_cnn_teacher` by the auto-teacher (or by
  the `teacher` variant, which is exactly that recipe).

`--config.data.name=digits` runs the same study on the embedded offline dataset (10
classes, 32x32x3): the fast version of the experiment.

The study reports "mean validation accuracy" without saying which epoch, so the
runner compares it with both kdjax's best-epoch and final-epoch top-1.
"""
from __future__ import annotations

from kdjax import recipes
from kdjax.errors import UserError

TEACHER, STUDENT = "simple_cnn_teacher", "simple_cnn_student"
EPOCHS = 30
LR = 0.01
KD_ALPHA = 0.5
DKD_WARMUP_EPOCHS = 2.5

# The study's table, in order: no-KD, KD at T = 1 and 5, DKD at T = 1 over its (alpha, beta)
# grid, and DKD at T > 1 (alpha 1, beta 2: the study's best beta at alpha 1), where the study
# saw NaN losses.
DKD_BETAS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5)
ROWS = ("nokd", "kd_t1", "kd_t5",
        *(f"dkd_t1_a{a:g}_b{b:g}" for a in (0.7, 1.0) for b in DKD_BETAS),
        "dkd_t2_a1_b2", "dkd_t4_a1_b2")


GRAMMAR = "nokd, teacher, kd_t<T>[_a<alpha>], dkd_t<T>_a<alpha>_b<beta>"
# A row name is shorthand for the config grammar's `method,t=T,alpha=A,beta=B`
# (`dkd_t4_a1_b2` == `dkd,t=4,alpha=1,beta=2`); both are accepted.
_SHORT_KEYS = {"t": "t", "a": "alpha", "b": "beta"}


def _parse(variant: str):
  """The variant as `recipes.parse_arg` reads it: (method, t, alpha, beta); -1: not given."""
  tokens = variant.split(",") if "," in variant or "=" in variant else variant.split("_")
  if "," not in variant and "=" not in variant:
    tokens = tokens[:1] + [f"{_SHORT_KEYS.get(t[:1], t[:1])}={t[1:]}" for t in tokens[1:]]
  try:
    a = recipes.parse_arg(",".join(tokens), positional=("method",), t=-1.0, alpha=-1.0, beta=-1.0)
  except UserError:
    a = None
  kd_ok = a is not None and a.method == "kd" and a.t != -1.0 and a.beta == -1.0
  dkd_ok = a is not None and a.method == "dkd" and min(a.t, a.alpha, a.beta) != -1.0
  if not (kd_ok or dkd_ok):
    raise UserError(f"unknown tiny-CNN variant {variant!r}; valid: {GRAMMAR} (or "
                    f"'kd,t=T[,alpha=A]', 'dkd,t=T,alpha=A,beta=B'); the study's table: {', '.join(ROWS)}")
  return a


def _common():
  c = recipes.base_config()
  c.model = STUDENT
  c.data.name = "cifar10"
  c.batch_size = 64
  c.epochs = EPOCHS
  c.optim.lr = LR
  c.optim.lr_milestones = ()
  c.teacher.arch = TEACHER
  c.teacher.train_epochs = EPOCHS
  c.teacher.train_lr = LR
  c.teacher.train_lr_milestones = ()
  c.kd.ce_weight, c.kd.kd_weight = 1.0 - KD_ALPHA, KD_ALPHA
  c.dkd.ce_weight, c.dkd.warmup_epochs = 1.0, DKD_WARMUP_EPOCHS
  c.log_every_steps = 200
  return c


def get_config(variant: str = "dkd_t1_a0.7_b0.25"):
  """The config of one variant of the study (see the module docstring for the names)."""
  variant = (variant or "dkd_t1_a0.7_b0.25").strip()
  c = _common()
  if variant == "nokd":
    c.method = "vanilla"
    return c
  if variant == "teacher":
    return recipes.teacher_config(c)
  a = _parse(variant)
  if a.method == "kd":
    alpha = a.alpha if a.alpha != -1.0 else KD_ALPHA
    c.method = "kd"
    c.kd.temperature = a.t
    c.kd.ce_weight, c.kd.kd_weight = 1.0 - alpha, alpha
    _check(variant, c.kd.temperature, alpha, kd=True)
    return c
  c.method = "dkd"
  c.dkd.temperature, c.dkd.alpha, c.dkd.beta = a.t, a.alpha, a.beta
  _check(variant, c.dkd.temperature, c.dkd.alpha, kd=False)
  c.optim.lr = dkd_lr(c.dkd.temperature)
  return c


def dkd_lr(temperature: float) -> float:
  """DKD's student LR: LR / T above T = 1, so LR * T (the step on the logits) stays that of T = 1."""
  return LR / max(1.0, temperature)


def _check(variant: str, temperature: float, alpha: float, kd: bool) -> None:
  if temperature <= 0:
    raise UserError(f"variant {variant!r}: the temperature must be positive")
  if kd and not 0.0 <= alpha <= 1.0:
    raise UserError(f"variant {variant!r}: KD's alpha is the KD weight (CE gets 1 - alpha), in [0, 1]")
