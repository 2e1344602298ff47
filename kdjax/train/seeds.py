"""N seeds in one compiled program: the train step mapped over a leading seed axis.

`config.seeds='0,1,2,3,4'` trains one independent student per seed (its own
initialisation, data order, augmentation, dropout and method state: the keys
`config.seed` would give), sharing the teacher's weights and the resident dataset: the
single-run step mapped over a leading seed axis, batched with `jax.vmap` on GPU/TPU or one
seed after another inside the program on the CPU (`config.seeds_map`). A seed whose loss or gradient stops being finite is
frozen at its last finite state (the step keeps it) and reported; the others go on.
Each seed writes what a single run writes under `<workdir>/seed<k>/`; `<workdir>/results.json`
has every seed's results and the mean ± std of their best and last top-1.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kdjax import data as data_lib
from kdjax.errors import UserError
from kdjax.methods import base as methods_base
from kdjax.train import export as export_lib
from kdjax.train import loop
from kdjax.train import step as step_lib


def parse(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The seeds of `config.seeds` ('0,1,2'); () for a single run of `config.seed`."""
  text = str(config.get("seeds", "") or "").strip()
  if not text:
    return ()
  try:
    seeds = tuple(int(t) for t in text.replace(" ", "").split(",") if t)
  except ValueError:
    raise UserError(f"config.seeds={config.seeds!r}: give integers separated by commas, e.g. "
                    "--config.seeds=0,1,2,3,4.") from None
  if len(set(seeds)) != len(seeds):
    raise UserError(f"config.seeds={config.seeds!r} repeats a seed; each seed trains one student.")
  return seeds


def check(config: ml_collections.ConfigDict, method: methods_base.Method, streaming: bool) -> None:
  """Refuses, with the reason, what one program of several seeds cannot run."""
  seeds = parse(config)
  if len(seeds) < 2:
    if seeds:
      raise UserError(f"config.seeds={config.seeds!r} names one seed; use --config.seed={seeds[0]} "
                      "for a single run, or give two or more seeds.")
    return
  if method.prestage is not None:
    raise UserError(f"method {config.method!r} has a prestage, whose phase runs one model; train its "
                    "seeds as separate runs (--config.seed=K, one per run).")
  if streaming:
    raise UserError(f"config.seeds needs a dataset resident on device (CIFAR, STL-10, digits): "
                    f"{config.data.name} streams one host pipeline per run, so seeds could not have "
                    "their own data order; train them as separate runs.")
  if jax.process_count() > 1:
    raise UserError("config.seeds runs on one host; on several hosts train the seeds as separate runs.")
  if method.lapack_in_step and map_mode(config, jax.default_backend()) == "sequential":
    # Seen hanging (> 6 min for one step of kdsvd) on the 2-core CPU: several seeds' LAPACK SVDs
    # in one XLA:CPU program, the thread-pool starvation kdjax/linalg.py orders away in one seed.
    raise UserError(f"{config.method}'s LAPACK decompositions of several seeds in one CPU program can "
                    "deadlock XLA:CPU's thread pool (kdjax/linalg.py); use --config.seeds_map=vmap or "
                    "train its seeds separately.")


def keys(seeds: Sequence[int]) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(init, data, augmentation) keys per seed, stacked: seed k's are a single run's of seed k."""
  split = [jax.random.split(jax.random.key(s), 3) for s in seeds]
  return tuple(jnp.stack([k[i] for k in split]) for i in range(3))


MAPS = ("auto", "vmap", "sequential")


def map_mode(config: ml_collections.ConfigDict, platform: str) -> str:
  """How the seed axis is mapped: `config.seeds_map`, where 'auto' is vmap on GPU/TPU and
  sequential on the CPU (XLA:CPU runs vmap's grouped convolutions ~4x slower than the seeds
  one after another: experiments/results/benchmarks.md)."""
  mode = str(config.get("seeds_map", "auto"))
  if mode not in MAPS:
    raise UserError(f"config.seeds_map={mode!r}; valid: {', '.join(map(repr, MAPS))}.")
  if mode == "auto":
    return "sequential" if platform == "cpu" else "vmap"
  return mode


def _map(fn, xs, mode: str):
  """`fn` over the leading axis of `xs`: batched (`jax.vmap`), or one seed after another in one
  program, unrolled (each seed's ops are its single run's). Not `lax.map`: XLA:CPU runs a
  convolution inside a loop body ~25x slower than at top level."""
  if mode == "vmap":
    return jax.vmap(fn)(*xs)
  n = jax.tree.leaves(xs)[0].shape[0]
  outs = [fn(*jax.tree.map(lambda a, k=k: a[k], xs)) for k in range(n)]
  return jax.tree.map(lambda *a: jnp.stack(a), *outs)


def train_step(state: step_lib.TrainState, teacher_vars, images, labels, perm, *,
               spec: step_lib.StepSpec, aug_keys: jax.Array, mode: str = "vmap"):
  """`step.train_step` of every seed in one program (leading axis of `state`, `perm`,
  `aug_keys`); a seed that has diverged stays as it is, only its step counter advancing."""

  def one(state, aug_key, perm):
    new, metrics = step_lib.train_step(state, teacher_vars, images, labels, perm,
                                       spec=dataclasses.replace(spec, aug_key=aug_key))
    frozen = state.nonfinite_step >= 0
    kept = state.replace(step=state.step + 1)
    return jax.tree.map(lambda a, b: jnp.where(frozen, a, b), kept, new), metrics

  return _map(one, (state, aug_keys, perm), mode)


def evaluate(variables, images, labels, *, spec: step_lib.EvalSpec, mode: str = "vmap") -> jax.Array:
  """Correct counts of every seed's model: (seeds, model + cohort members)."""
  return _map(lambda v: step_lib.evaluate(v, images, labels, spec=spec), (variables,), mode)


def new_history(seeds: Sequence[int]) -> dict[str, Any]:
  """A phase's history with one record list per seed (`history['seeds']`)."""
  history = loop.new_history()
  history["seeds"] = [{"seed": s, "epochs": [], "best_top1": -1.0, "best_epoch": -1} for s in seeds]
  return history


def seed_dir(workdir: str, seed: int) -> str:
  """Where seed `seed` of a run of several writes what a single run writes."""
  return os.path.join(workdir, f"seed{seed}")


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """The single-run config that seed `seed` of `config` is equal to."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.seed, c.seeds = seed, ""
  return c


def export(config: ml_collections.ConfigDict, dataset: data_lib.Dataset, workdir: str, variables: dict,
           history: dict, devices, t_start: float, arch: str | None = None) -> dict[str, Any]:
  """Each seed's model (`variables` stacked over the seeds, of `arch`) and results.json under
  seed<k>/, then the run's results.json (mean ± std)."""
  seeds = parse(config)
  per_seed = []
  for k, (seed, h) in enumerate(zip(seeds, history["seeds"])):
    shared = {key: history[key] for key in ("train_seconds", "wall_seconds", "teacher_top1") if key in history}
    # Per seed, the shared program's throughput divided among the seeds.
    h = dict(h, **shared, train_images=history["train_images"] / len(seeds))
    results = export_lib.run(seed_config(config, seed), dataset, seed_dir(workdir, seed),
                             loop.model_view(variables, k, len(seeds)), h, devices, t_start, arch=arch)
    if "diverged_at_step" in h:
      results["diverged_at_step"] = h["diverged_at_step"]
      export_lib.write_results(seed_dir(workdir, seed), results)
    per_seed.append(results)
  summary = {key: per_seed[0][key] for key in ("method", "teacher", "student", "dataset", "epochs",
                                                "teacher_top1", "wall_seconds", "devices")}
  summary["seeds"] = list(seeds)
  for key in ("best_top1", "last_top1"):
    values = [r[key] for r in per_seed]
    summary[key] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "per_seed": values}
  summary["diverged_seeds"] = [r["seed"] for r in per_seed if "diverged_at_step" in r]
  summary["images_per_second"] = history["train_images"] / max(history["train_seconds"], 1e-9)
  summary["seed_dirs"] = [seed_dir(workdir, s) for s in seeds]
  summary["config"] = config.to_dict()
  export_lib.write_results(workdir, summary)
  loop.log(f"[kdjax] {len(seeds)} seeds: best top-1 {summary['best_top1']['mean']:.2f} ± "
           f"{summary['best_top1']['std']:.2f}, last {summary['last_top1']['mean']:.2f} ± "
           f"{summary['last_top1']['std']:.2f}" + (f"; diverged: seeds {summary['diverged_seeds']}"
                                                   if summary["diverged_seeds"] else ""))
  return summary
