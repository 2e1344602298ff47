"""Teacher (and vanilla-student baseline) training on CIFAR-100: cross-entropy only.

The CRD/RepDistiller `train_teacher.py` recipe: SGD momentum 0.9, weight decay
5e-4, batch 64, 240 epochs, LR 0.05 (0.01 for MobileNetV2/ShuffleNet) x0.1 after
epochs 150/180/210.

    python -m kdjax.main --config=configs/teacher_cifar.py:resnet32x4 --workdir=runs/teachers/cifar100_resnet32x4
"""
from kdjax import models, recipes
from kdjax.errors import UserError


def get_config(arch: str = "resnet32x4"):
  """Vanilla training of `arch` on CIFAR-100."""
  arch = arch or "resnet32x4"
  if arch not in models.names():
    raise UserError(f"unknown model {arch!r}; valid models: {', '.join(models.names())}")
  c = recipes.base_config()
  c.method = "vanilla"
  c.model = arch
  c.optim.lr = recipes.student_lr(arch)
  return c
