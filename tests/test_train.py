"""The trainer: end-to-end CLI runs on mocked CIFAR-100, resume, data parallelism, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from kdjax import checkpoint, methods, recipes, train
from tests import parity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = parity.cli_env()


def _tiny_kd_args(workdir, epochs, teacher_checkpoint=""):
  return [sys.executable, os.path.join(ROOT, "tests", "mocked_main.py"),
          "--config=configs/kd_cifar.py:resnet56,resnet20", "--config.model=resnet8",
          "--config.teacher.arch=resnet8", f"--config.teacher.checkpoint={teacher_checkpoint}",
          "--config.teacher.auto_workdir={workdir}/teacher", "--config.teacher.train_epochs=1",
          f"--config.epochs={epochs}", "--config.batch_size=32", "--config.eval_batch_size=64",
          "--config.progress_bar=False", f"--workdir={workdir}"]


def _run(args, timeout=600):
  return subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.mark.long
def test_end_to_end_interrupt_resume_deterministic(tmp_path):
  """Auto-trains the teacher, distills, checkpoints; a killed run resumes and ends bit-equal."""
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  done = _run(_tiny_kd_args(a, epochs=4))
  assert done.returncode == 0, done.stderr[-3000:]
  assert "training resnet8 on cifar100" in done.stdout
  results = json.load(open(os.path.join(a, "results.json")))
  for key in ("method", "teacher", "student", "dataset", "epochs", "best_top1", "last_top1",
              "teacher_top1", "wall_seconds", "images_per_second"):
    assert key in results, key
  assert (results["method"], results["teacher"], results["student"], results["epochs"]) == ("kd", "resnet8", "resnet8", 4)
  assert results["best_top1"] >= results["last_top1"]
  assert checkpoint.is_model_dir(os.path.join(a, "teacher", "model"))
  assert checkpoint.is_model_dir(os.path.join(a, "best"))
  assert len(open(os.path.join(a, "metrics.jsonl")).readlines()) == 4
  assert os.listdir(os.path.join(a, "tensorboard"))

  # Same run, killed after its first checkpoint, then resumed.
  proc = subprocess.Popen(_tiny_kd_args(b, 4, teacher_checkpoint=os.path.join(a, "teacher")),
                          cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  saved = lambda: any(n.isdigit() for n in os.listdir(os.path.join(b, "checkpoints"))) \
      if os.path.isdir(os.path.join(b, "checkpoints")) else False
  while not saved() and time.time() < deadline:
    assert proc.poll() is None, "the run ended before it could be interrupted"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(b, "results.json"))
  resumed = _run(_tiny_kd_args(b, 4, teacher_checkpoint=os.path.join(a, "teacher")))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from" in resumed.stdout
  va, _ = checkpoint.load_model(a)
  vb, _ = checkpoint.load_model(b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-6), va, vb)
  assert json.load(open(os.path.join(b, "results.json")))["last_top1"] == results["last_top1"]
  # A finished run is not run again.
  again = _run(_tiny_kd_args(b, 4, teacher_checkpoint=os.path.join(a, "teacher")))
  assert again.returncode == 0 and "nothing to do" in again.stdout


@pytest.mark.parametrize("args,message", [
    (["--config=configs/kd_cifar.py", "--config.model=resnet9"], "unknown model 'resnet9'"),
    (["--config=configs/kd_cifar.py", "--config.method=kdd"], "unknown method 'kdd'"),
    (["--config=configs/dkd_cifar.py:resnet32x4,resnet20"], "unknown teacher,student pair"),
    (["--config=configs/dkd_cifar.py", "--config.optim.lrr=0.1"], "Did you mean config.optim.lr?"),
    (["--config=configs/kd_cifar.py", "--config.teacher.checkpoint=/nonexistent/teacher"], "does not exist"),
    (["--config=configs/kd_cifar.py", "--config.data.data_dir={tmp}"], "not prepared"),
    (["--config=configs/teacher_cifar.py:resnet9"], "unknown model 'resnet9'"),
])
def test_bad_input_is_one_clear_error(tmp_path, args, message):
  args = [a.replace("{tmp}", str(tmp_path / "no_data")) for a in args]
  result = _run([sys.executable, "-m", "kdjax.main", *args, f"--workdir={tmp_path / 'run'}"], timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert message in result.stderr
  assert "Traceback" not in result.stderr
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


_SHARDED_SCRIPT = r"""
import json, sys
import jax, numpy as np
from kdjax import data, models, recipes, train
assert jax.device_count() == 4, jax.devices()
config = recipes.base_config()
config.method, config.model, config.teacher.arch = "kd", "resnet8", "resnet8"
config.batch_size = 32
dataset = data.load("digits")
teacher = models.get("resnet8", num_classes=10)
tvars = jax.jit(teacher.init)(jax.random.key(1), np.zeros((1, 32, 32, 3), np.float32))
out = {}
for n in (4, 1):
  mesh = train.make_mesh(jax.devices()[:n])
  run = train.build(config, dataset, mesh, [train.Teacher(teacher, tvars)])
  state = run.state
  images, labels = jax.numpy.asarray(dataset.train_images), jax.numpy.asarray(dataset.train_labels)
  perm = run.permute(jax.random.key(0))
  losses = []
  for _ in range(3):
    state, metrics = run.train_step(state, run.teacher_vars, images, labels, perm)
    losses.append(float(metrics["loss"]))
  leaves = [np.asarray(x).ravel() for x in jax.tree.leaves((state.params, state.batch_stats))]
  out[n] = (losses, np.concatenate(leaves))
print(json.dumps({"losses4": out[4][0], "losses1": out[1][0],
                  "max_param_diff": float(np.max(np.abs(out[4][1] - out[1][1]))),
                  "max_param": float(np.max(np.abs(out[1][1])))}))
"""


@pytest.mark.long
def test_sharded_step_equals_single_device_step():
  env = dict(ENV, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  result = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose(out["losses4"], out["losses1"], rtol=1e-5)
  assert out["max_param_diff"] <= 1e-5 * max(1.0, out["max_param"])


def test_learning_rate_steps_at_the_published_epochs():
  """LR x0.1 from 0-indexed epoch 150 (1-indexed 151) on, as mdistiller's adjust_learning_rate."""
  config = recipes.base_config()
  spe = 781
  lr = train.create_learning_rate_fn(config, spe)
  assert float(lr(150 * spe - 1)) == pytest.approx(0.05)
  assert float(lr(150 * spe)) == pytest.approx(0.005)
  assert float(lr(180 * spe)) == pytest.approx(0.0005)
  assert float(lr(210 * spe)) == pytest.approx(0.00005)


@pytest.mark.parametrize("nesterov", [False, True])
def test_optimizer_is_pytorch_sgd(nesterov):
  """Coupled weight decay + momentum without dampening, three steps, LR change in between."""
  config = recipes.base_config()
  config.optim.nesterov = nesterov
  lr_fn = lambda step: jnp.where(step < 2, 0.05, 0.005)
  tx = train.create_optimizer(config, lr_fn)
  rng = np.random.default_rng(0)
  w = rng.standard_normal((5, 3)).astype(np.float32)
  grads = [rng.standard_normal((5, 3)).astype(np.float32) for _ in range(3)]
  params, opt_state = {"w": jnp.asarray(w)}, tx.init({"w": jnp.asarray(w)})
  tw = torch.nn.Parameter(torch.tensor(w))
  topt = torch.optim.SGD([tw], lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=nesterov)
  for i, g in enumerate(grads):
    updates, opt_state = tx.update({"w": jnp.asarray(g)}, opt_state, params)
    params = optax.apply_updates(params, updates)
    for group in topt.param_groups:
      group["lr"] = 0.05 if i < 2 else 0.005
    tw.grad = torch.tensor(g)
    topt.step()
  np.testing.assert_allclose(params["w"], tw.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_nonfinite_loss_skips_the_update_and_stops_the_run():
  config = recipes.base_config()
  config.model, config.batch_size = "resnet8", 8
  from kdjax import data, models
  dataset = data.load("digits")
  model = models.get("resnet8", num_classes=10)
  nan_method = methods.Method(name="nan", needs_teacher=False,
                              loss=lambda p, s, out, t, y, prog: (jnp.nan * jnp.sum(out[0]), {}, s))
  lr_fn = train.create_learning_rate_fn(config, 10)
  tx = train.create_optimizer(config, lr_fn)
  state = train.create_train_state(jax.random.key(0), model, nan_method, (tx,), (32, 32, 3))
  mesh = train.make_mesh(jax.devices()[:1])
  step = jax.jit(train.make_train_step(
      model, nan_method, (tx,), lr_fn, batch_size=8, steps_per_epoch=10, mean=dataset.mean,
      std=dataset.std, crop_padding=4, flip=True, aug_key=jax.random.key(1),
      batch_sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))))
  before = jax.tree.map(np.asarray, state.params)
  new_state, _ = step(state, (), jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels),
                      jnp.arange(80))
  assert int(new_state.nonfinite_step) == 0 and int(new_state.step) == 1
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, new_state.params))
  with pytest.raises(train.NonFiniteLossError, match="not finite at step 0"):
    train.raise_if_nonfinite(new_state, config)


def test_teacher_from_pth_and_wrong_teacher_refused(tmp_path):
  """config.teacher.checkpoint accepts a PyTorch .pth; a checkpoint of another arch is refused."""
  from kdjax import data
  from kdjax.errors import UserError
  from tests.torch_reference import models as torch_models
  torch.manual_seed(0)
  net = torch_models.MODELS["resnet8"](num_classes=10)
  path = str(tmp_path / "teacher.pth")
  torch.save({"model": net.state_dict()}, path)
  dataset = data.load("digits")
  config = recipes.base_config()
  config.method, config.model, config.teacher.arch, config.teacher.checkpoint = "kd", "resnet8", "resnet8", path
  teacher = train.load_teacher(config, dataset, str(tmp_path))
  module, variables = teacher.module, teacher.variables
  x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    expected = net.eval()(torch.tensor(x.transpose(0, 3, 1, 2)))[0].numpy()
  np.testing.assert_allclose(module.apply(variables, x, train=False)[0], expected, atol=1e-4)
  config.teacher.arch = "resnet14"
  with pytest.raises(UserError, match="missing"):
    train.load_teacher(config, dataset, str(tmp_path))


_TOPOLOGY_SCRIPT = r"""
import sys, tempfile
import jax, numpy as np
from kdjax import checkpoint, data, recipes, train
config = recipes.base_config()
config.method, config.model, config.batch_size = "vanilla", "simple_cnn_student", 16
dataset = data.load("digits")
devices = jax.devices()
def fresh(n, seed):
  config.seed = seed
  return train.build(config, dataset, train.make_mesh(devices[:n])).state
for src, dst in ((4, 1), (1, 4)):
  d = tempfile.mkdtemp()
  saved = fresh(src, 0)
  ck = checkpoint.TrainStateCheckpoints(d)
  ck.save(1, saved, {"epochs": [{"epoch": 1}]})
  ck.close()
  target = fresh(dst, 1)  # other values, the destination's shardings
  restored, history = checkpoint.TrainStateCheckpoints(d).restore(target)
  assert history["epochs"] == [{"epoch": 1}]
  for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(b.sharding.device_set) == dst, (b.sharding, dst)
print("ok")
"""


def test_checkpoint_restores_on_another_device_count():
  """A state saved on 4 devices restores on 1, and one saved on 1 restores on 4."""
  env = dict(ENV, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  result = subprocess.run([sys.executable, "-c", _TOPOLOGY_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("ok")
