"""KDCL (Guo et al., CVPR 2020) on CIFAR-100: collaborative learning of two or more networks.

    python -m kdjax.main --config=configs/kdcl_cifar.py:resnet32,resnet32
    python -m kdjax.main --config=configs/kdcl_cifar.py:resnet32,wrn_16_2 --config.kdcl.rule=linear

The argument names the networks, `NET1,NET2[,NET3...]`; `config.model` becomes the
cohort 'NET1+NET2[+...]', and the method takes one view per network, so each
network trains on its own random crop/flip of the batch's images. Each distills from
the peers' fused soft target (`config.kdcl.rule`: naive, linear, min_logit, mean;
kdjax/methods/kdcl.py, where every ⚠ choice is written down).

Schedule: KDCL's CIFAR-100 hyperparameters are not recorded (docs/methods.md §7.16), so
the online configs share AFD's recipe (300 epochs, batch 128, SGD lr 0.1, momentum
0.9, weight decay 1e-4, x0.1 at 150/225). No published number is recorded
(experiments/repro/tables.py has none).
"""
from kdjax import recipes
from kdjax.models import cohort

DEFAULT = "resnet32,resnet32"
PAIRS = {"resnet32,resnet32": {}}  # any cohort of zoo models runs; no per-cohort overrides


def get_config(arg: str = DEFAULT):
  """KDCL config for the networks `NET1,NET2[,NET3...]`, one augmented view per network."""
  c = recipes.base_config()
  c.method = "kdcl"
  c.model = cohort.name_of(recipes.parse_arg(arg or DEFAULT, rest="networks").networks)
  c.teacher.arch = ""
  c.epochs, c.batch_size = 300, 128
  c.optim.lr, c.optim.momentum, c.optim.weight_decay = 0.1, 0.9, 1e-4
  c.optim.lr_milestones, c.optim.lr_decay = (150, 225), 0.1
  return c
