"""AFD (Chung et al., ICML 2020) on CIFAR-100: two or more networks trained online.

    python -m kdjax.main --config=configs/afd_cifar.py:resnet32,resnet32
    python -m kdjax.main --config=configs/afd_cifar.py:resnet32,wrn_16_2,resnet56   # cyclic, K = 3

The argument names the networks, `NET1,NET2[,NET3...]` (any models of the zoo);
`config.model` becomes the cohort 'NET1+NET2[+...]' (kdjax.models.cohort). The run's
top-1 is the ensemble's; results.json lists each network's top-1 and exports each as
a model dir under `WORKDIR/members/`.

AFD's own recipe, from the paper's experiment-setup text (docs/sources.md [S3]), which
follows ONE's schedule: 300 epochs, batch 128, logit loss by SGD lr 0.1, momentum 0.9,
weight decay 1e-4, x0.1 at epochs 150 and 225; the adversarial loss by Adam lr 2e-5,
weight decay 1e-1, x0.1 at epochs 75 and 150 (`config.afd`, see kdjax/methods/afd.py
for every ⚠ choice). docs/methods.md §6.1's "weight decay 5e-4 ⚠, Adam decayed at
150/225 ⚠" are not the paper's text and are not used.

Published top-1 (experiments/repro/tables.py): the paper's ResNet-32 pair (Table 3, secondary summary ⚠): 74.03, against a
vanilla ResNet-32 of 69.38 under this recipe — not the CRD-protocol ResNet-32 (71.14).
Whether it is each network's accuracy (averaged over the pair, 5 runs) and at the best
or last epoch is not recorded.
"""
from kdjax import recipes
from kdjax.models import cohort

DEFAULT = "resnet32,resnet32"

# Published cohorts (any cohort of zoo models runs; none needs an override of the recipe).
PAIRS = {"resnet32,resnet32": {}}


def get_config(arg: str = DEFAULT):
  """AFD config for the networks `NET1,NET2[,NET3...]`."""
  c = recipes.base_config()
  c.method = "afd"
  c.model = cohort.name_of(recipes.parse_arg(arg or DEFAULT, rest="networks").networks)
  c.teacher.arch = ""
  c.epochs, c.batch_size = 300, 128
  c.optim.lr, c.optim.momentum, c.optim.weight_decay = 0.1, 0.9, 1e-4
  c.optim.lr_milestones, c.optim.lr_decay = (150, 225), 0.1
  return c
