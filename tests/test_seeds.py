"""Several seeds in one compiled program (config.seeds): each seed equals its single run; a
diverging seed is frozen alone; the CLI writes one directory per seed and the mean ± std."""
import dataclasses
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import data, methods, recipes, train
from kdjax.errors import UserError
from kdjax.train import seeds as seeds_lib
from tests import parity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = parity.cli_env()
STEPS = 2


def _config(method="kd", seeds="", seeds_map="auto"):
  c = recipes.base_config()
  c.method, c.model, c.teacher.arch = method, "resnet8", "resnet8"
  c.data.name, c.batch_size, c.eval_batch_size = "digits", 32, 64
  c.seeds, c.seeds_map = seeds, seeds_map
  return c


def _teacher(dataset):
  return [_resnet8_teacher(dataset.num_classes)]


@functools.lru_cache(maxsize=None)
def _resnet8_teacher(num_classes):
  """A randomly initialised resnet8 (one jitted init: op by op it compiles each initialiser)."""
  from kdjax import models  # pylint: disable=import-outside-toplevel
  module = models.get("resnet8", num_classes=num_classes)
  init = jax.jit(lambda key: module.init(key, jnp.zeros((1, 32, 32, 3)), train=False))
  return train.Teacher(module, init(jax.random.key(7)))


def _first(dataset, n):
  """`dataset` with its first `n` training examples only."""
  return dataclasses.replace(dataset, train_images=dataset.train_images[:n], train_labels=dataset.train_labels[:n])


def _train(config, dataset, teachers, epoch=0):
  run = train.build(config, dataset, train.make_mesh(jax.devices()[:1]), teachers)
  fitter = train.Fitter(config, run, dataset, train.make_mesh(jax.devices()[:1]), "/tmp", "t")
  state = run.state
  for i, (images, labels, perm) in enumerate(fitter.train_inputs(epoch)):
    if i == STEPS:
      break
    state, metrics = run.train_step(state, run.teacher_vars, images, labels, perm)
  return run, fitter, jax.device_get(state), jax.device_get(metrics)


def _compare(dataset, teachers, method, steps, seeds_map):
  """(the 2-seed program's state of seeds 3,5; each seed's single-run state) after `steps`
  steps, and the last step's metrics of both."""
  global STEPS  # pylint: disable=global-statement
  STEPS, saved = steps, STEPS
  try:
    run2, fitter2, both, metrics2 = _train(_config(method, "3,5", seeds_map), dataset, teachers)
    singles = []
    for seed in (3, 5):
      single = _config(method)
      single.seed = seed
      _, fitter1, alone, metrics1 = _train(single, dataset, teachers)
      order = np.asarray(next(fitter1.train_inputs(0))[2])
      singles.append((alone, metrics1, order))
  finally:
    STEPS = saved
  return run2, fitter2, both, metrics2, singles


@pytest.mark.optimized
@pytest.mark.long
@pytest.mark.parametrize("method", ["kd", "crd"])
def test_each_seed_of_a_sequential_run_is_its_single_run_bit_for_bit(method):
  """config.seeds_map='sequential' (the CPU's default): the seeds one after another inside one
  program; after 3 steps every leaf of seed k's state (parameters, BatchNorm statistics, CRD's
  memory banks, optimizer state) and its losses are its single run's bit for bit."""
  dataset = data.load("digits")
  run2, fitter2, both, metrics2, singles = _compare(dataset, _teacher(dataset), method, 3, "sequential")
  assert run2.seeds == 2 and both.step.tolist() == [3, 3]
  for k, (alone, metrics1, order) in enumerate(singles):
    assert np.array_equal(order, np.asarray(next(fitter2.train_inputs(0))[2])[k])  # same data order
    for a, b in zip(jax.tree.leaves(jax.tree.map(lambda a: np.asarray(a)[k], both)), jax.tree.leaves(alone)):
      np.testing.assert_array_equal(a, b)
    assert float(metrics2["loss"][k]) == float(metrics1["loss"])
  assert not np.allclose(jax.tree.leaves(both.params)[0][0], jax.tree.leaves(both.params)[0][1])


@pytest.mark.long
def test_each_seed_of_a_vmapped_kd_run_equals_its_single_run():
  """config.seeds_map='vmap' (GPU/TPU's default): initialisation, data order, augmentation and
  updates of seed k in the 2-seed program against seed k alone, after 2 steps: equal up to
  float32 rounding, not bit for bit, because vmap turns the seeds' convolutions into one
  grouped convolution that XLA:CPU sums in another order. Measured here: parameters within 3e-8 absolute, every other leaf within 7e-6 of its
  largest magnitude; asserted with margin (1e-6, 1e-4). Over more steps such rounding can flip
  a ReLU near 0 and the runs drift apart as two runs on different hardware do (seed 5 at step
  3: 4e-6 in a parameter). A wrong key or data order moves every leaf by its whole size."""
  dataset = data.load("digits")
  run2, fitter2, both, metrics2, singles = _compare(dataset, _teacher(dataset), "kd", 2, "vmap")
  assert run2.seeds == 2 and both.step.shape == (2,)
  for k, (alone, metrics1, order) in enumerate(singles):
    assert np.array_equal(order, np.asarray(next(fitter2.train_inputs(0))[2])[k])  # same data order
    mine = jax.tree.map(lambda a: np.asarray(a)[k], both)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(alone)):
      if np.issubdtype(np.asarray(b).dtype, np.floating):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * max(float(np.max(np.abs(b))), 1e-3))
      else:
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(mine.params), jax.tree.leaves(alone.params)):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(metrics2["loss"][k], metrics1["loss"], rtol=1e-5)
  # Different seeds are different students.
  assert not np.allclose(jax.tree.leaves(both.params)[0][0], jax.tree.leaves(both.params)[0][1])


@pytest.mark.optimized
@pytest.mark.long
def test_each_seed_keeps_its_own_method_state_crd_vmap():
  """vmap: CRD's memory banks, normaliser and embeddings per seed: after one step each seed's method
  state and parameters equal its single run's up to float32 rounding (its loss bit for bit): each leaf within
  1e-6 of its largest magnitude (or 1e-6 absolute below 1). The normaliser Z (~3e3: a mean over the
  batch times the training set's size) can differ in its last bit (measured: 1 ulp, 1.6e-7 relative, with this
  teacher), as the vmapped student's grouped convolutions sum in another order. Its student
  gradients differ more than KD's (up to 5e-4 of a leaf's largest value for seed 3, not yet
  explained: the memory bank, the contrast sampling and the forward pass are equal), so the
  student is compared by the KD test above."""
  dataset = data.load("digits")
  _, _, both, metrics2, singles = _compare(dataset, _teacher(dataset), "crd", 1, "vmap")
  for k, (alone, metrics1, _) in enumerate(singles):
    mine = jax.tree.map(lambda a: np.asarray(a)[k], both)
    for a, b in zip(jax.tree.leaves(mine.method_state), jax.tree.leaves(alone.method_state)):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * max(float(np.max(np.abs(b))), 1.0))
    for a, b in zip(jax.tree.leaves(mine.params["method"]), jax.tree.leaves(alone.params["method"])):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
    assert float(metrics2["loss_crd"][k]) == float(metrics1["loss_crd"])
  assert not np.allclose(both.method_state["memory_s"][0], both.method_state["memory_s"][1])


def test_initial_states_and_first_step_inputs_are_bit_identical():
  """With vmap too, no arithmetic differs before the first batched convolution: the initial
  parameters and optimizer state of each seed are its single run's bit for bit."""
  dataset = data.load("digits")
  teachers = _teacher(dataset)
  mesh = train.make_mesh(jax.devices()[:1])
  both = jax.device_get(train.build(_config("kd", "0,1", "vmap"), dataset, mesh, teachers).state)
  for k in (0, 1):
    single = _config("kd")
    single.seed = k
    alone = jax.device_get(train.build(single, dataset, mesh, teachers).state)
    for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x: np.asarray(x)[k], both)), jax.tree.leaves(alone)):
      np.testing.assert_array_equal(a, b)


def test_a_diverging_seed_is_frozen_and_the_others_go_on():
  """A loss that is NaN for seed 1's initialisation only: seed 1 keeps its initial state, seed 0
  trains; the run stops only when every seed has diverged."""
  def loss(params, state, student_out, teacher_out, batch, progress):
    ce = methods.cross_entropy(student_out[0], batch["label"])
    # NaN at step 0 only, for the seed the method parameter marks (set below): later steps are
    # finite, so the seed stays unchanged only if the program keeps it frozen.
    return ce + jnp.where((params["bad"] > 0) & (progress.step == 0), jnp.nan, 0.0), {}, state

  def init(rng, student_out, teacher_out, data_info):
    return {"bad": jnp.zeros(())}, {}

  dataset = data.load("digits")
  config = _config("vanilla", "0,1", "vmap")
  method = methods.Method(name="nan_seed", needs_teacher=False, loss=loss, init=init)
  mesh = train.make_mesh(jax.devices()[:1])
  run = train.build(config, dataset, mesh, method=method)
  state = run.state.replace(params={**run.state.params, "method": {"bad": jnp.array([0.0, 1.0])}})
  before = jax.device_get(state.params["student"])
  fitter = train.Fitter(config, run, dataset, mesh, "/tmp", "t")
  for i, (images, labels, perm) in enumerate(fitter.train_inputs(0)):
    if i == STEPS:
      break
    state, _ = run.train_step(state, run.teacher_vars, images, labels, perm)
  after = jax.device_get(state)
  assert after.nonfinite_step.tolist() == [-1, 0] and after.step.tolist() == [STEPS, STEPS]
  for a, b in zip(jax.tree.leaves(after.params["student"]), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a[1], b[1])  # frozen
    assert not np.array_equal(a[0], b[0]) or a.ndim == 0  # seed 0 trained
  history = seeds_lib.new_history((0, 1))
  fitter._check_finite(state, history)  # pylint: disable=protected-access
  assert history["seeds"][1]["diverged_at_step"] == 0 and "diverged_at_step" not in history["seeds"][0]
  all_bad = state.replace(nonfinite_step=jnp.array([4, 0]))
  with pytest.raises(train.NonFiniteLossError):
    fitter._check_finite(all_bad, history)  # pylint: disable=protected-access


@pytest.mark.parametrize("seeds,message", [("0", "names one seed"), ("0,0", "repeats"), ("a,b", "integers")])
def test_bad_seed_lists_are_refused(seeds, message):
  with pytest.raises(UserError, match=message):
    seeds_lib.check(_config("kd", seeds), methods.get("kd", recipes.base_config()), False)


def test_seed_map_mode():
  assert seeds_lib.map_mode(_config("kd", "0,1"), "cpu") == "sequential"
  assert seeds_lib.map_mode(_config("kd", "0,1"), "gpu") == "vmap"
  assert seeds_lib.map_mode(_config("kd", "0,1", "vmap"), "cpu") == "vmap"
  with pytest.raises(UserError, match="seeds_map"):
    seeds_lib.map_mode(_config("kd", "0,1", "pmap"), "cpu")


def test_prestage_methods_and_streaming_data_are_refused_with_the_reason():
  ab = recipes.base_config()
  with pytest.raises(UserError, match="prestage"):
    seeds_lib.check(_config("ab", "0,1"), methods.get("ab", ab), False)
  with pytest.raises(UserError, match="resident"):
    seeds_lib.check(_config("kd", "0,1"), methods.get("kd", ab), True)


@pytest.mark.long
def test_quickstart_with_three_seeds_writes_each_seed_and_the_mean(tmp_path):
  """The CLI: one teacher, three students in one program; seed<k>/ each as a single run's
  workdir; results.json with mean ± std; a rerun does nothing. (The quickstart with resnet8 as
  its teacher too: the same run at a fraction of the compute.)"""
  workdir = str(tmp_path / "run")
  args = [sys.executable, "-m", "kdjax.main", "--config=configs/quickstart.py:resnet8,resnet8", f"--workdir={workdir}",
          "--config.seeds=0,1,2", "--config.epochs=2", "--config.teacher.train_epochs=1",
          "--config.optim.lr_milestones=(1,)", "--config.progress_bar=False"]
  done = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  summary = json.load(open(os.path.join(workdir, "results.json")))
  assert summary["seeds"] == [0, 1, 2] and summary["epochs"] == 2
  per_seed = [json.load(open(os.path.join(workdir, f"seed{k}", "results.json"))) for k in range(3)]
  assert [r["seed"] for r in per_seed] == [0, 1, 2]
  best = [r["best_top1"] for r in per_seed]
  assert summary["best_top1"]["per_seed"] == best
  assert summary["best_top1"]["mean"] == pytest.approx(np.mean(best))
  assert summary["best_top1"]["std"] == pytest.approx(np.std(best))
  for k in range(3):
    lines = open(os.path.join(workdir, f"seed{k}", "metrics.jsonl")).read().splitlines()
    assert len(lines) == 2
    for sub in ("model", "best"):
      assert os.path.exists(os.path.join(workdir, f"seed{k}", sub, "meta.json"))
  again = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
  assert again.returncode == 0 and "nothing to do" in again.stdout


@pytest.mark.optimized
@pytest.mark.long
def test_a_resumed_seeds_run_is_bit_identical_to_an_uninterrupted_one(tmp_path):
  """Stop after epoch 1 (checkpoint), restore, finish epoch 2: the same state bit for bit as
  two epochs in one go, and each seed's history intact."""
  from kdjax import checkpoint  # pylint: disable=import-outside-toplevel
  dataset = _first(data.load("digits"), 256)  # 8 steps an epoch: resuming is about epochs, not their length
  mesh = train.make_mesh(jax.devices()[:1])

  def fit(config, workdir, state=None):
    run = train.build(config, dataset, mesh)
    ckpts = checkpoint.TrainStateCheckpoints(os.path.join(workdir, "checkpoints"))
    history = seeds_lib.new_history((0, 1))
    if ckpts.latest_epoch() is not None:
      state, history = ckpts.restore(run.state)
    writers = [train.Writer(os.path.join(workdir, f"seed{s}")) for s in (0, 1)]
    fitter = train.Fitter(config, run, dataset, mesh, workdir, "t")
    state, history = fitter.fit(state if state is not None else run.state, history, ckpts, writers)
    ckpts.close()
    for w in writers:
      w.close()
    return jax.device_get(state), history

  config = _config("vanilla", "0,1")
  config.epochs, config.log_every_steps = 2, 3
  straight, h_straight = fit(config, str(tmp_path / "straight"))
  first = _config("vanilla", "0,1")
  first.epochs, first.log_every_steps = 1, 3
  fit(first, str(tmp_path / "resumed"))
  resumed, h_resumed = fit(config, str(tmp_path / "resumed"))
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
    np.testing.assert_array_equal(a, b)
  timing = ("seconds", "train_images_per_second")
  strip = lambda h: [[{k: v for k, v in e.items() if k not in timing} for e in s["epochs"]] for s in h["seeds"]]
  assert strip(h_resumed) == strip(h_straight) and len(h_resumed["seeds"][1]["epochs"]) == 2
