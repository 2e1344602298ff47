"""KD / DKD / vanilla losses: PyTorch parity, the KD identity, numerical safety."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kdjax import methods, recipes
from kdjax.errors import UserError
from kdjax.methods import dkd as dkd_lib
from kdjax.methods import kd as kd_lib
from tests.torch_reference import losses as ref

jax.config.update("jax_enable_x64", False)


def _logits(seed, batch=8, classes=100, scale=3.0):
  rng = np.random.default_rng(seed)
  s = (scale * rng.standard_normal((batch, classes))).astype(np.float32)
  t = (scale * rng.standard_normal((batch, classes))).astype(np.float32)
  y = rng.integers(0, classes, batch).astype(np.int32)
  return s, t, y


def _torch_value_and_grad(fn, s, t, y):
  st = torch.tensor(s, requires_grad=True)
  value = fn(st, torch.tensor(t), torch.tensor(y, dtype=torch.long))
  value.backward()
  return value.item(), st.grad.numpy()


def _progress(epoch):
  return methods.Progress(step=jnp.int32(0), epoch=jnp.int32(epoch))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_matches_torch(temperature):
  s, t, y = _logits(0)
  value, grad = jax.value_and_grad(kd_lib.kd_loss)(s, t, temperature)
  ref_value, ref_grad = _torch_value_and_grad(lambda a, b, _: ref.kd(a, b, temperature), s, t, y)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha,beta,temperature", [(1.0, 8.0, 4.0), (1.0, 2.0, 1.0), (0.5, 6.0, 2.0)])
def test_dkd_matches_torch(alpha, beta, temperature):
  s, t, y = _logits(1)
  fn = lambda a, b: dkd_lib.dkd_loss(a, b, y, alpha, beta, temperature)[0]
  value, grad = jax.value_and_grad(fn)(s, t)
  ref_value, ref_grad = _torch_value_and_grad(
      lambda a, b, c: ref.dkd(a, b, c, alpha, beta, temperature), s, t, y)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)


def test_kd_method_total_matches_torch():
  s, t, y = _logits(2)
  cfg = recipes.base_config()
  method = methods.get("kd", cfg)
  total = lambda a: method.loss({}, {}, (a, {}), (t, {}), {"label": y}, _progress(0))[0]
  value, grad = jax.value_and_grad(total)(s)
  ref_value, ref_grad = _torch_value_and_grad(
      lambda a, b, c: 0.1 * ref.cross_entropy(a, c) + 0.9 * ref.kd(a, b, 4.0), s, t, y)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature,kd_weight", [(2.0, 9.0), (3.0, 1.0)])
def test_kd_with_logit_standardization_matches_torch(temperature, kd_weight):
  """KD+LS: CE + W * T^2 KL of the z-scored logits (the release's KD with --logit-stand)."""
  s, t, y = _logits(3)
  cfg = recipes.base_config()
  cfg.kd.temperature, cfg.kd.ce_weight, cfg.kd.kd_weight = temperature, 1.0, kd_weight
  cfg.kd.logit_standardization = True
  method = methods.get("kd", cfg)
  total = lambda a: method.loss({}, {}, (a, {}), (t, {}), {"label": y}, _progress(0))[0]
  value, grad = jax.value_and_grad(total)(s)
  ref_value, ref_grad = _torch_value_and_grad(
      lambda a, b, c: ref.cross_entropy(a, c) + kd_weight * ref.kd(ref.standardize(a), ref.standardize(b),
                                                                  temperature), s, t, y)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-6)


def test_dkd_with_logit_standardization_matches_torch():
  s, t, y = _logits(5)
  cfg = recipes.base_config()
  cfg.dkd.alpha, cfg.dkd.beta, cfg.dkd.temperature, cfg.dkd.logit_standardization = 9.0, 81.0, 4.0, True
  method = methods.get("dkd", cfg)
  total = lambda a: method.loss({}, {}, (a, {}), (t, {}), {"label": y}, _progress(100))[0]
  value, grad = jax.value_and_grad(total)(s)
  ref_value, ref_grad = _torch_value_and_grad(
      lambda a, b, c: ref.cross_entropy(a, c) + ref.dkd(ref.standardize(a), ref.standardize(b), c, 9.0, 81.0, 4.0),
      s, t, y)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-5)


def test_logit_standardization_makes_kd_blind_to_each_samples_logit_scale_and_shift():
  s, t, _ = _logits(4)
  rng = np.random.default_rng(4)
  scale, shift = rng.uniform(0.2, 5.0, (s.shape[0], 1)), rng.normal(0, 10, (s.shape[0], 1))
  ls_kd = lambda a, b: kd_lib.kd_loss(methods.base.standardize_logits(a), methods.base.standardize_logits(b), 2.0)
  moved = (scale * s + shift).astype(np.float32)
  np.testing.assert_allclose(ls_kd(moved, t), ls_kd(s, t), rtol=1e-4)
  np.testing.assert_allclose(ls_kd(s, (scale * t - shift).astype(np.float32)), ls_kd(s, t), rtol=1e-4)
  assert abs(float(kd_lib.kd_loss(moved, t, 2.0)) - float(kd_lib.kd_loss(s, t, 2.0))) > 1e-2  # plain KD is not
  z = np.asarray(methods.base.standardize_logits(s))
  np.testing.assert_allclose(z.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(z.std(-1, ddof=1), 1.0, rtol=1e-5)


def test_kd_ls_config_carries_the_release_settings_and_numbers():
  from experiments.repro import tables  # pylint: disable=import-outside-toplevel
  ls = recipes.load_config_module("configs/kd_ls_cifar.py")
  c = ls.get_config()
  assert (c.method, c.teacher.arch, c.model) == ("kd", "resnet32x4", "resnet8x4")
  assert (c.kd.temperature, c.kd.ce_weight, c.kd.kd_weight, c.kd.logit_standardization) == (2.0, 1.0, 9.0, True)
  r50 = ls.get_config("ResNet50,MobileNetV2")
  assert (r50.kd.temperature, r50.kd.kd_weight, r50.optim.lr) == (3.0, 1.0, 0.01)
  assert set(ls.PAIRS) == set(tables.REPORTED["kd_ls_cifar"]) == set(tables.TABLES["ls"])
  assert tables.REPORTED["kd_ls_cifar"]["resnet32x4,resnet8x4"] == 76.62
  assert not recipes.load_config_module("configs/kd_cifar.py").get_config().kd.logit_standardization


@pytest.mark.parametrize("epoch,factor", [(0, 1 / 20), (9, 10 / 20), (19, 1.0), (100, 1.0)])
def test_dkd_method_total_and_warmup(epoch, factor):
  """mdistiller counts epochs from 1: the first epoch's distillation weight is 1/20."""
  s, t, y = _logits(3)
  cfg = recipes.base_config()
  method = methods.get("dkd", cfg)
  total = lambda a: method.loss({}, {}, (a, {}), (t, {}), {"label": y}, _progress(epoch))[0]
  value, grad = jax.value_and_grad(total)(s)
  ref_value, ref_grad = _torch_value_and_grad(
      lambda a, b, c: ref.cross_entropy(a, c) + factor * ref.dkd(a, b, c, 1.0, 8.0, 4.0), s, t, y)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 8.0])
def test_dkd_with_coupled_beta_is_kd(temperature):
  """alpha = 1, beta = 1 - p_target(teacher) recovers classical KD exactly (the paper's identity)."""
  s, t, y = _logits(4)
  pt = jax.nn.softmax(t / temperature, axis=-1)[np.arange(len(y)), y]
  dkd_value = dkd_lib.dkd_loss(s, t, y, 1.0, 1.0 - pt, temperature)[0]
  np.testing.assert_allclose(dkd_value, kd_lib.kd_loss(s, t, temperature), rtol=1e-5, atol=1e-6)


def test_dkd_invariant_to_logit_shift():
  s, t, y = _logits(5)
  a = dkd_lib.dkd_loss(s, t, y, 1.0, 8.0, 4.0)[0]
  b = dkd_lib.dkd_loss(s + 37.0, t - 11.0, y, 1.0, 8.0, 4.0)[0]
  np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 8.0, 10.0])
@pytest.mark.parametrize("margin", [1e3, 1e4])
@pytest.mark.parametrize("case", ["student_confident", "both_confident", "teacher_confident", "wrong_class"])
def test_dkd_finite_at_extreme_logits(temperature, margin, case):
  """Where mdistiller's formulation gives inf/NaN (docs/methods.md §2.6), kdjax stays finite."""
  s, t, y = _logits(6, batch=4, classes=10, scale=1.0)
  rows = np.arange(len(y))
  if case in ("student_confident", "both_confident"):
    s[rows, y] += margin
  if case in ("teacher_confident", "both_confident"):
    t[rows, y] += margin
  if case == "wrong_class":
    s[rows, (y + 1) % 10] += margin
    t[rows, y] -= margin
  fn = lambda a, b: dkd_lib.dkd_loss(a, b, y, 1.0, 8.0, temperature)[0]
  value, (gs, gt) = jax.value_and_grad(fn, argnums=(0, 1))(s, t)
  assert np.isfinite(value) and np.all(np.isfinite(gs))
  # The teacher is a constant: its gradient is exactly zero.
  assert np.all(gt == 0.0)


def test_dkd_agrees_with_reference_when_reference_is_finite():
  """On moderately large logits (|z/T| < 100) the -1000 mask is still exact."""
  s, t, y = _logits(7, scale=30.0)
  ours = dkd_lib.dkd_loss(s, t, y, 1.0, 8.0, 4.0)[0]
  theirs = ref.dkd(torch.tensor(s), torch.tensor(t), torch.tensor(y, dtype=torch.long), 1.0, 8.0, 4.0)
  np.testing.assert_allclose(ours, theirs.item(), rtol=1e-4)


def test_dkd_refuses_two_classes():
  s, t, y = _logits(8, classes=2)
  with pytest.raises(UserError, match="at least 3 classes"):
    dkd_lib.dkd_loss(s, t, y, 1.0, 8.0, 4.0)


def test_kd_finite_and_teacher_gradient_zero():
  s, t, y = _logits(9, scale=1e4)
  value, (gs, gt) = jax.value_and_grad(kd_lib.kd_loss, argnums=(0, 1))(s, t, 4.0)
  assert np.isfinite(value) and np.all(np.isfinite(gs)) and np.all(gt == 0.0)


def test_vanilla_is_cross_entropy():
  s, t, y = _logits(10)
  method = methods.get("vanilla", recipes.base_config())
  value = method.loss({}, {}, (s, {}), None, {"label": y}, _progress(0))[0]
  np.testing.assert_allclose(value, ref.cross_entropy(torch.tensor(s), torch.tensor(y, dtype=torch.long)).item(), rtol=1e-6)
  assert not method.needs_teacher


def test_unknown_method_lists_valid_ones():
  with pytest.raises(UserError, match="valid methods: .*dkd.*kd.*vanilla"):
    methods.get("dkdd", recipes.base_config())


def test_dkd_ls_config_carries_the_releases_settings():
  """DKD+LS: alpha = W, beta = beta0 * W, T from the release's log names, LS on; its README numbers."""
  from experiments.repro import tables  # pylint: disable=import-outside-toplevel
  module = recipes.load_config_module("configs/dkd_ls_cifar.py")
  c = module.get_config("vgg13,vgg8")
  assert (c.method, c.dkd.temperature, c.dkd.alpha, c.dkd.beta, c.dkd.logit_standardization) == (
      "dkd", 2.0, 15.0, 30.0, True)
  d = module.get_config("resnet32x4,resnet8x4")
  assert (d.dkd.alpha, d.dkd.beta, d.dkd.ce_weight) == (9.0, 72.0, 1.0)
  assert set(module.PAIRS) == set(tables.REPORTED["dkd_ls_cifar"]) == set(tables.TABLES["ls"])
  assert tables.REPORTED["dkd_ls_cifar"]["resnet32x4,resnet8x4"] == 77.01
