"""DML (Zhang et al., CVPR 2018) on CIFAR-100: mutual learning of two or more networks.

    python -m kdjax.main --config=configs/dml_cifar.py:resnet32,resnet32
    python -m kdjax.main --config=configs/dml_cifar.py:resnet32,resnet32 --config.dml.alternate=True

The argument names the networks, `NET1,NET2[,NET3...]`; `config.model` becomes the
cohort 'NET1+NET2[+...]'. Loss: CE + KL to every other peer at T = 1 (kdjax/methods/dml.py).

Schedule: DML's own CIFAR-100 hyperparameters are not recorded (docs/methods.md §7.15:
unknown), so the online configs share AFD's recipe (300 epochs, batch 128, SGD lr 0.1,
momentum 0.9, weight decay 1e-4, x0.1 at 150/225), under which the AFD paper reports
its DML baselines; DML, KDCL and AFD runs are then directly comparable.
No published CIFAR-100 number is recorded for any pair: experiments/repro/tables.py records none.
"""
from kdjax import recipes
from kdjax.models import cohort

DEFAULT = "resnet32,resnet32"
PAIRS = {"resnet32,resnet32": {}}  # any cohort of zoo models runs; no per-cohort overrides


def get_config(arg: str = DEFAULT):
  """DML config for the networks `NET1,NET2[,NET3...]`."""
  c = recipes.base_config()
  c.method = "dml"
  c.model = cohort.name_of(recipes.parse_arg(arg or DEFAULT, rest="networks").networks)
  c.teacher.arch = ""
  c.epochs, c.batch_size = 300, 128
  c.optim.lr, c.optim.momentum, c.optim.weight_decay = 0.1, 0.9, 1e-4
  c.optim.lr_milestones, c.optim.lr_decay = (150, 225), 0.1
  return c
