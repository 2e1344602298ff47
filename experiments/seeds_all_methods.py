"""Checks that every registered method runs several seeds in one program, or is refused saying why.

For each method: a 2-seed run (config.seeds='0,1') on the embedded digits data with a
small student (resnet8x4; a resnet8 cohort for the online methods) and a random resnet8x4
teacher, built and stepped once; prints OK with the two seeds' losses, or REFUSED with
the message. Minutes on a CPU (one compilation per method):

    python experiments/seeds_all_methods.py [METHOD ...]
"""
from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import data, methods, models, recipes, train
from kdjax.errors import UserError
from kdjax.train import seeds as seeds_lib

ONLINE = ("dml", "kdcl", "afd")  # cohorts of peers: the model is the cohort


def check(name: str, dataset, mesh) -> str:
  """One line: OK and the seeds' first losses, or REFUSED and why."""
  c = recipes.base_config()
  c.method, c.data.name, c.batch_size, c.eval_batch_size, c.seeds = name, "digits", 16, 64, "0,1"
  c.model = "resnet8+resnet8" if name in ONLINE else "resnet8x4"
  c.teacher.arch = "resnet8" if name == "ofd" else "resnet8x4"  # OFD reads a CIFAR ResNet's BNs
  if name == "sftn":
    c.sftn.student = "resnet8"
  try:
    method = methods.get(name, c)
    seeds_lib.check(c, method, False)
    teachers = []
    if method.needs_teacher:
      module = models.get(c.teacher.arch, num_classes=dataset.num_classes)
      teachers = [train.Teacher(module, module.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False))]
    run = train.build(c, dataset, mesh, teachers, method=method)
    fitter = train.Fitter(c, run, dataset, mesh, "/tmp", name)
    images, labels, perm = next(fitter.train_inputs(0))
    _, metrics = run.train_step(run.state, run.teacher_vars, images, labels, perm)
    losses = ", ".join(f"{float(v):.4f}" for v in np.asarray(metrics["loss"]))
    return f"{name:10s} OK       losses per seed {losses}"
  except UserError as e:
    return f"{name:10s} REFUSED  {e}"


def main(argv: list[str]) -> int:
  dataset = data.load("digits")
  mesh = train.make_mesh(jax.devices()[:1])
  for name in argv or methods.names():
    print(check(name, dataset, mesh), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
