"""Quickstart: teacher then DKD student on the embedded digits dataset, offline, minutes on a CPU.

scikit-learn's handwritten digits (1,797 real 8x8 images, 10 classes) brought to
32x32x3 ship with the install, so this runs with no download:

    python -m kdjax.main --config=configs/quickstart.py --workdir=/tmp/kdjax

It first trains the teacher (resnet14) into WORKDIR/teacher, then distills
resnet8 with DKD, and prints both test top-1 accuracies. Epochs and the LR steps
are shortened from the CIFAR protocol; beta is the CIFAR resnet56->resnet20 value.
"""
from kdjax import recipes


def get_config(pair: str = "resnet14,resnet8"):
  """DKD on digits for `teacher,student` (any two registered models)."""
  a = recipes.parse_arg(pair or "resnet14,resnet8", positional=("teacher", "student"))
  teacher, student = a.teacher, a.student
  c = recipes.base_config()
  c.method = "dkd"
  c.model = student
  c.teacher.arch = teacher
  c.teacher.auto_workdir = "{workdir}/teacher"
  c.data.name = "digits"
  c.batch_size = 64
  c.eval_batch_size = 400
  c.epochs = 6
  c.optim.lr = 0.05
  c.optim.lr_milestones = (4,)
  c.teacher.train_epochs = 6
  c.teacher.train_lr = 0.05
  c.teacher.train_lr_milestones = (4,)
  c.dkd.beta = 2.0
  c.dkd.warmup_epochs = 2.0
  c.log_every_steps = 10
  return c
