"""FKD and ensemble KD/DKD: PyTorch parity, numerical safety, configs, end-to-end CLI runs.

Parity: kdjax's FKD (value and gradients with respect to the student's logits and pooled
features) against tests/torch_reference/fkd.py, float32 to 1e-5, for one teacher and for
an ensemble of teachers of different widths, with FR squared or not, and with unlabelled
(-1) examples in the batch.
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kdjax import methods, recipes
from kdjax.errors import UserError
from kdjax.methods import base
from kdjax.methods import dkd as dkd_lib
from kdjax.methods import fkd as fkd_lib
from kdjax.methods import kd as kd_lib
from experiments.repro import tables
from tests import parity
from tests.torch_reference import fkd as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = parity.cli_env()
BATCH, CLASSES, D_S = 12, 10, 24
RTOL = 1e-5


def _progress():
  return methods.Progress(step=jnp.int32(0), epoch=jnp.int32(0))


def _config(**fkd_fields):
  c = recipes.base_config()
  for key, value in fkd_fields.items():
    c.fkd[key] = value
  return c


def _inputs(seed, teacher_dims=(32,), unlabelled=0):
  """Student logits, post-ReLU-like pooled features, teachers' pooled features, labels."""
  rng = np.random.default_rng(seed)
  logits = (2 * rng.standard_normal((BATCH, CLASSES))).astype(np.float32)
  h_s = np.abs(rng.standard_normal((BATCH, D_S))).astype(np.float32)
  h_ts = [np.abs(rng.standard_normal((BATCH, d))).astype(np.float32) for d in teacher_dims]
  labels = rng.integers(0, CLASSES, BATCH).astype(np.int32)
  labels[:unlabelled] = -1
  return logits, h_s, h_ts, labels


def _teacher_out(h_ts, seed=9):
  """(logits, {'pooled'}) per teacher: a tuple for one teacher, a list for an ensemble."""
  rng = np.random.default_rng(seed)
  outs = [(rng.standard_normal((BATCH, 100)).astype(np.float32), {"pooled": h}) for h in h_ts]
  return outs[0] if len(outs) == 1 else outs


def _jax_value_and_grads(method, logits, h_s, h_ts, labels):
  """(total, metrics, d/d logits, d/d student pooled, d/d teachers' pooled)."""

  def total(logits, h_s, h_ts):
    t_out = _teacher_out(h_ts)
    loss, metrics, _ = method.loss({}, {}, (logits, {"pooled": h_s}), t_out,
                                   {"label": labels}, _progress())
    return loss, metrics

  (value, metrics), grads = jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True)(
      logits, h_s, list(h_ts))
  return value, metrics, *grads


def _torch_value_and_grads(logits, h_s, h_ts, labels, cfg):
  tl, th = torch.tensor(logits, requires_grad=True), torch.tensor(h_s, requires_grad=True)
  total, ce, fk, fr = ref.fkd_loss(tl, th, [torch.tensor(h) for h in h_ts],
                                   torch.tensor(labels, dtype=torch.long), cfg.ce_weight,
                                   cfg.fk_weight, cfg.fr_weight, cfg.fr_squared)
  total.backward()
  return total.item(), (ce.item(), fk.item(), fr.item()), tl.grad.numpy(), th.grad.numpy()


def _assert_close(ours, theirs):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  scale = max(float(np.max(np.abs(theirs))), 1e-30)
  np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=RTOL * scale)


# ------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("teacher_dims", [(32,), (32, 16), (32, 16, 8)], ids=["1", "2", "3"])
@pytest.mark.parametrize("fr_squared", [True, False])
def test_fkd_matches_torch(teacher_dims, fr_squared):
  cfg = _config(fr_squared=fr_squared)
  logits, h_s, h_ts, labels = _inputs(0, teacher_dims, unlabelled=3)
  value, metrics, g_logits, g_h, g_t = _jax_value_and_grads(methods.get("fkd", cfg), logits, h_s,
                                                             h_ts, labels)
  ref_value, (ce, fk, fr), ref_g_logits, ref_g_h = _torch_value_and_grads(logits, h_s, h_ts, labels,
                                                                           cfg.fkd)
  _assert_close(value, ref_value)
  _assert_close([metrics["loss_ce"], metrics["loss_fkd"], metrics["loss_fr"]], [ce, fk, fr])
  _assert_close(g_logits, ref_g_logits)
  _assert_close(g_h, ref_g_h)
  assert all(np.all(g == 0) for g in g_t), "the teacher kernel must be under stop_gradient"
  assert fk > 1e-3 and fr > 1e-3  # the terms compared are not trivially zero


def test_kernel_term_is_zero_iff_kernels_match_and_ignores_diagonal():
  _, h_s, _, _ = _inputs(1)
  k = fkd_lib.correlation_kernel(h_s)
  np.testing.assert_allclose(np.diag(k), 1.0, rtol=1e-6)
  assert float(fkd_lib.kernel_loss(h_s, k)) < 1e-12
  # A per-row rescaling changes the features but not their cosines.
  scaled = h_s * np.linspace(0.1, 10, BATCH, dtype=np.float32)[:, None]
  assert float(fkd_lib.kernel_loss(scaled, k)) < 1e-12
  # A different diagonal alone costs nothing; one off-diagonal pair costs 2 d^2 / (B (B-1)).
  k2 = np.array(k)
  np.fill_diagonal(k2, 0.0)
  assert float(fkd_lib.kernel_loss(h_s, k2)) < 1e-12
  k2[0, 1] += 0.5
  k2[1, 0] += 0.5
  np.testing.assert_allclose(float(fkd_lib.kernel_loss(h_s, k2)), 2 * 0.25 / (BATCH * (BATCH - 1)),
                             rtol=1e-5)


def test_ensemble_kernel_is_the_members_mean():
  _, h_s, h_ts, labels = _inputs(2, (32, 16))
  method = methods.get("fkd", _config())
  mean_kernel = (fkd_lib.correlation_kernel(h_ts[0]) + fkd_lib.correlation_kernel(h_ts[1])) / 2
  logits = np.zeros((BATCH, CLASSES), np.float32)
  _, metrics, _ = method.loss({}, {}, (logits, {"pooled": h_s}), _teacher_out(h_ts),
                              {"label": labels}, _progress())
  np.testing.assert_allclose(metrics["loss_fkd"], fkd_lib.kernel_loss(h_s, mean_kernel), rtol=1e-6)
  # Two identical members are that one teacher.
  single = method.loss({}, {}, (logits, {"pooled": h_s}), _teacher_out(h_ts[:1]),
                       {"label": labels}, _progress())[0]
  double = method.loss({}, {}, (logits, {"pooled": h_s}), _teacher_out([h_ts[0], h_ts[0]]),
                       {"label": labels}, _progress())[0]
  np.testing.assert_allclose(double, single, rtol=1e-7)


@pytest.mark.parametrize("fr_squared", [True, False])
@pytest.mark.parametrize("case", ["student_rows", "teacher_rows", "all_student", "all_both"])
def test_zero_feature_rows_give_finite_value_and_bounded_gradient(case, fr_squared):
  """Dead-ReLU features (zero pooled rows): value finite, a zero student row gets gradient 0.

  PyTorch's `F.normalize` gives such a row a finite but ~1e14 gradient (1/eps); kdjax gives 0,
  and agrees with PyTorch on every other row and on the value.
  """
  logits, h_s, h_ts, labels = _inputs(3, (32, 16))
  zero = {"student_rows": [0, 5], "all_student": list(range(BATCH)), "all_both": list(range(BATCH))}
  h_s[zero.get(case, [])] = 0.0
  if case == "teacher_rows":
    h_ts[0][[1, 2]] = 0.0
  if case == "all_both":
    for h in h_ts:
      h[:] = 0.0
  cfg = _config(fr_squared=fr_squared)
  value, metrics, g_logits, g_h, _ = _jax_value_and_grads(methods.get("fkd", cfg), logits, h_s,
                                                          h_ts, labels)
  for x in (value, *metrics.values(), g_logits, g_h):
    assert np.all(np.isfinite(x))
  ref_value, _, ref_g_logits, ref_g_h = _torch_value_and_grads(logits, h_s, h_ts, labels, cfg.fkd)
  _assert_close(value, ref_value)
  _assert_close(g_logits, ref_g_logits)
  live = np.ones(BATCH, bool)
  live[zero.get(case, [])] = False
  assert np.all(g_h[~live] == 0)
  if case == "student_rows":
    assert np.max(np.abs(ref_g_h[~live])) > 1e6  # what the 1/eps gradient would have been
  if live.any():
    _assert_close(g_h[live], ref_g_h[live])


def test_batch_of_one_is_a_clear_error():
  with pytest.raises(UserError, match="at least 2"):
    fkd_lib.kernel_loss(np.ones((1, 4), np.float32), np.ones((1, 1), np.float32))


def test_method_flags_and_defaults():
  method = methods.get("fkd", recipes.base_config())
  assert method.needs_teacher and method.multi_teacher and not method.shared_labels
  assert dict(recipes.base_config().fkd) == {"ce_weight": 1.0, "fk_weight": 300.0,
                                             "fr_weight": 0.01, "fr_squared": True}
  assert methods.get("kd").multi_teacher and methods.get("dkd").multi_teacher
  assert methods.get("kd").shared_labels and methods.get("dkd").shared_labels


# -------------------------------------------------------------------- ensemble KD / DKD


def _logit_inputs(seed):
  rng = np.random.default_rng(seed)
  s = (3 * rng.standard_normal((8, 100))).astype(np.float32)
  t1 = (3 * rng.standard_normal((8, 100))).astype(np.float32)
  t2 = (3 * rng.standard_normal((8, 100))).astype(np.float32)
  y = rng.integers(0, 100, 8).astype(np.int32)
  return s, t1, t2, y


def _method_value_and_grad(name, s, teacher_out, y, epoch=30):
  method = methods.get(name, recipes.base_config())
  progress = methods.Progress(step=jnp.int32(0), epoch=jnp.int32(epoch))
  fn = lambda a: method.loss({}, {}, (a, {}), teacher_out, {"label": y}, progress)[0]
  return jax.value_and_grad(fn)(s)


@pytest.mark.parametrize("name", ["kd", "dkd"])
def test_single_teacher_unchanged(name):
  """One teacher (a tuple, as the trainer passes it) gives exactly the pre-ensemble loss."""
  s, t, _, y = _logit_inputs(0)
  cfg = recipes.base_config()
  if name == "kd":
    old = lambda a: (cfg.kd.ce_weight * base.cross_entropy(a, y)
                     + cfg.kd.kd_weight * kd_lib.kd_loss(a, t, cfg.kd.temperature))
  else:
    old = lambda a: (cfg.dkd.ce_weight * base.cross_entropy(a, y) + dkd_lib.dkd_loss(
        a, t, y, cfg.dkd.alpha, cfg.dkd.beta, cfg.dkd.temperature)[0])
  value, grad = _method_value_and_grad(name, s, (t, {}), y)
  old_value, old_grad = jax.value_and_grad(old)(s)
  np.testing.assert_array_equal(value, old_value)
  np.testing.assert_array_equal(grad, old_grad)


@pytest.mark.parametrize("name", ["kd", "dkd"])
def test_ensemble_of_identical_teachers_is_the_teacher(name):
  s, t, _, y = _logit_inputs(1)
  single = _method_value_and_grad(name, s, (t, {}), y)
  double = _method_value_and_grad(name, s, [(t, {}), (t, {})], y)
  np.testing.assert_allclose(double[0], single[0], rtol=1e-7)
  np.testing.assert_allclose(double[1], single[1], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["kd", "dkd"])
def test_ensemble_distills_the_mean_logits(name):
  s, t1, t2, y = _logit_inputs(2)
  ensemble = _method_value_and_grad(name, s, [(t1, {}), (t2, {})], y)
  mean = _method_value_and_grad(name, s, ((t1 + t2) / 2, {}), y)
  np.testing.assert_allclose(ensemble[0], mean[0], rtol=1e-6)
  np.testing.assert_allclose(ensemble[1], mean[1], rtol=1e-5, atol=1e-8)
  # ... which is not the same as either member's loss (the test can fail).
  assert abs(float(ensemble[0]) - float(_method_value_and_grad(name, s, (t1, {}), y)[0])) > 1e-3


# ------------------------------------------------------------------------------ configs


def _config_module():
  return recipes.load_config_module(os.path.join(ROOT, "configs", "fkd_cifar.py"))


def test_config_variants():
  m = _config_module()
  c = m.get_config()
  assert (c.method, c.teacher.arch, c.model, c.batch_size, c.epochs) == ("fkd", "resnet32x4", "resnet8x4", 64, 240)
  assert c.teachers == () and c.data.name == "cifar100" and c.teacher.dataset == ""
  assert tables.REPORTED["fkd_cifar"] == {}  # the paper's per-pair numbers were not retrieved: none claimed

  e = m.get_config("resnet32x4,resnet8x4,ensemble2")
  assert tuple(e.teachers) == ("resnet32x4", "resnet32x4")
  assert (e.epochs, e.batch_size, e.optim.lr, tuple(e.optim.lr_milestones), e.optim.weight_decay) == (
      160, 128, 0.1, (80, 120), 1e-4)
  assert len(m.get_config("vgg8,vgg8,ensemble4").teachers) == 4

  x = m.get_config("vgg13,vgg8,cifar10")
  assert (x.data.name, x.teacher.dataset, x.teacher.arch, x.data.image_size) == ("cifar10", "cifar100", "vgg13", 0)
  s = m.get_config("vgg13,vgg8,stl10")
  assert (s.data.name, s.data.image_size, s.data.unlabelled, s.batch_size) == ("stl10", 32, True, 512)

  for bad, message in [("vgg13,vgg8,tiny_imagenet", "unknown FKD variant"),
                       ("vgg13,vgg8,ensemble1", "at least 2"), ("vgg8,vgg8", "unknown teacher,student")]:
    with pytest.raises(UserError, match=message):
      m.get_config(bad)


# ------------------------------------------------------------------- end to end (CLI)

def _cli(workdir, *overrides, config="configs/fkd_cifar.py:resnet32x4,resnet8x4"):
  # Two steps of everything: 32 mock examples per split, batch 16, 1 epoch; tiny nets.
  return [sys.executable, os.path.join(ROOT, "tests", "mocked_main.py"), f"--config={config}",
          "--config.model=resnet8", "--config.teacher.arch=resnet8", "--config.epochs=1",
          "--config.teacher.train_epochs=1", "--config.batch_size=16", "--config.eval_batch_size=16",
          "--config.teacher.train_batch_size=16",
          "--config.teacher.auto_workdir={workdir}/teacher_{dataset}_{arch}",
          "--config.progress_bar=False", f"--workdir={workdir}", *overrides]


def _run(args):
  return subprocess.run(args, cwd=ROOT, env=dict(ENV, KDJAX_MOCK_EXAMPLES="32"), capture_output=True,
                        text=True, timeout=900)


@pytest.mark.long
def test_fkd_ensemble_end_to_end(tmp_path):
  """FKD from a 2-teacher ensemble: both teachers auto-trained (seeds 0, 1), then the student."""
  workdir = str(tmp_path / "run")
  done = _run(_cli(workdir, "--config.teachers=resnet8,resnet8"))
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results["method"] == "fkd" and results["epochs"] == 1
  teachers = sorted(d for d in os.listdir(workdir) if d.startswith("teacher_"))
  assert teachers == ["teacher_cifar100_resnet8", "teacher_cifar100_resnet8_seed1"]
  metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert np.isfinite(metrics[-1]["train_loss_fkd"]) and metrics[-1]["train_loss_fkd"] > 0


@pytest.mark.long
def test_fkd_cross_dataset_end_to_end_and_kd_refuses(tmp_path):
  """A CIFAR-100 teacher distils a CIFAR-10 student with FKD; KD refuses the same pair (exit 2)."""
  workdir = str(tmp_path / "fkd")
  config = "configs/fkd_cifar.py:vgg13,vgg8,cifar10"
  done = _run(_cli(workdir, config=config))
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results["dataset"] == "cifar10" and results["method"] == "fkd"
  metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert np.isfinite(metrics[-1]["train_loss_fkd"]) and metrics[-1]["train_loss_fkd"] > 0
  teacher = os.path.join(workdir, "teacher_cifar100_resnet8")
  assert json.load(open(os.path.join(teacher, "results.json")))["dataset"] == "cifar100"

  kd = _run(_cli(str(tmp_path / "kd"), "--config.method=kd", f"--config.teacher.checkpoint={teacher}",
                 config=config))
  assert kd.returncode == 2, kd.stderr[-3000:]
  assert "Traceback" not in kd.stderr
  assert "cifar100" in kd.stderr and "cifar10" in kd.stderr and "fkd" in kd.stderr
  assert not os.path.exists(tmp_path / "kd" / "checkpoints")
