"""The 2022-2024 logit methods (DIST, CTKD): PyTorch parity, numerical safety, configs.
Their 2-epoch trains on mocked CIFAR are in tests/test_recent_methods_train.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kdjax import methods, ops, recipes
from kdjax.methods import ctkd as ctkd_lib
from kdjax.methods import dist as dist_lib
from tests.torch_reference import losses as ref



def _logits(seed, batch=8, classes=100, scale=3.0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  s = (scale * rng.standard_normal((batch, classes))).astype(dtype)
  t = (scale * rng.standard_normal((batch, classes))).astype(dtype)
  return s, t, rng.integers(0, classes, batch).astype(np.int32)


def _torch_value_and_grad(fn, s, t):
  st = torch.tensor(s, requires_grad=True)
  value = fn(st, torch.tensor(t))
  value.backward()
  return value.item(), st.grad.numpy()


def _method_total(cfg, s, t, y):
  method = methods.get("dist", cfg)
  progress = methods.Progress(step=jnp.int32(0), epoch=jnp.int32(0))
  return lambda a: method.loss({}, {}, (a, {}), (t, {}), {"label": y}, progress)[0]


@pytest.mark.parametrize("temperature,beta,gamma", [(4.0, 2.0, 2.0), (1.0, 1.0, 1.0), (2.0, 0.5, 3.0)])
def test_dist_matches_torch_in_float64(temperature, beta, gamma):
  s, t, _ = _logits(0, dtype=np.float64)
  with jax.enable_x64(True):
    fn = lambda a: sum(dist_lib.dist_loss(a, jnp.asarray(t), temperature, beta, gamma))
    value, grad = jax.value_and_grad(fn)(jnp.asarray(s))
    value, grad = float(value), np.asarray(grad)
  ref_value, ref_grad = _torch_value_and_grad(lambda a, b: ref.dist(a, b, temperature, beta, gamma), s, t)
  np.testing.assert_allclose(value, ref_value, rtol=1e-8)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-8, atol=1e-12 * np.abs(ref_grad).max())


def test_dist_method_total_matches_torch_in_float32():
  s, t, y = _logits(1)
  cfg = recipes.base_config()
  value, grad = jax.value_and_grad(_method_total(cfg, s, t, y))(s)
  yt = torch.tensor(y, dtype=torch.long)
  ref_value, ref_grad = _torch_value_and_grad(
      lambda a, b: ref.cross_entropy(a, yt) + ref.dist(a, b, 4.0, 2.0, 2.0), s, t)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-6)


def test_dist_of_a_copy_of_the_teacher_is_only_the_eps_term_and_blind_to_affine_maps():
  _, t, _ = _logits(2, dtype=np.float64)
  with jax.enable_x64(True):
    inter, intra = dist_lib.dist_loss(jnp.asarray(t), jnp.asarray(t), 4.0, 1.0, 1.0)
  # rho(a, a) = |a|^2 / (|a|^2 + eps): what is left is the release's eps, per row and per column.
  p = np.exp(t / 4.0) / np.exp(t / 4.0).sum(1, keepdims=True)
  left = lambda m: 16.0 * np.mean(1e-8 / (np.sum(np.square(m - m.mean(1, keepdims=True)), 1) + 1e-8))
  np.testing.assert_allclose(float(inter), left(p), rtol=1e-6)
  np.testing.assert_allclose(float(intra), left(p.T), rtol=1e-6)
  # Pearson sees relations only: a positive affine map of the inputs leaves it unchanged.
  a, b = np.random.default_rng(2).random((2, 6, 10)).astype(np.float32)
  np.testing.assert_allclose(dist_lib.pearson(3.0 * a + 1.0, b), dist_lib.pearson(a, b), rtol=1e-5)
  s, t32, _ = _logits(2)
  assert float(sum(dist_lib.dist_loss(s, t32, 4.0, 1.0, 1.0))) > 100 * (left(p) + left(p.T))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 10.0])
@pytest.mark.parametrize("scale", [1e2, 1e4])
def test_dist_finite_at_extreme_logits(temperature, scale):
  """|logits| up to 1e4: the softmaxes saturate to one-hot, whole classes go to zero."""
  s, t, _ = _logits(3, batch=4, classes=10, scale=scale)
  fn = lambda a: sum(dist_lib.dist_loss(a, t, temperature, 2.0, 2.0))
  value, grad = jax.value_and_grad(fn)(s)
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))


def test_norm_has_torchs_zero_gradient_at_zero():
  x = np.zeros((2, 3), np.float32)
  grad = jax.grad(lambda a: jnp.sum(ops.norm(a, axis=1)))(x)
  xt = torch.zeros((2, 3), requires_grad=True)
  xt.norm(dim=1).sum().backward()
  np.testing.assert_array_equal(np.asarray(grad), xt.grad.numpy())
  y = np.random.default_rng(4).standard_normal((3, 5)).astype(np.float32)
  np.testing.assert_allclose(ops.norm(y, axis=1), np.linalg.norm(y, axis=1), rtol=1e-6)


def test_dist_config_carries_the_release_recipe_and_numbers():
  from experiments.repro import tables  # pylint: disable=import-outside-toplevel
  module = recipes.load_config_module("configs/dist_cifar.py")
  c = module.get_config()
  assert (c.method, c.teacher.arch, c.model) == ("dist", "resnet32x4", "resnet8x4")
  assert (c.dist.temperature, c.dist.beta, c.dist.gamma, c.dist.ce_weight) == (4.0, 2.0, 2.0, 1.0)
  assert (c.batch_size, c.epochs, c.optim.lr, c.optim.weight_decay) == (64, 240, 0.05, 5e-4)
  assert module.get_config("resnet32x4,ShuffleV1").optim.lr == 0.01
  assert set(module.PAIRS) == set(tables.REPORTED["dist_cifar"]) == set(tables.TABLES["dist"])
  assert tables.REPORTED["dist_cifar"]["resnet32x4,resnet8x4"] == 76.31
  assert tables.REPORTED_METRIC["dist_cifar"] == "unknown"


# ------------------------------------------------------------------------------------- CTKD

@pytest.mark.parametrize("epoch", [0, 4, 9, 30])
def test_ctkd_matches_torch_in_float64_with_the_reversed_temperature_gradient(epoch):
  """Loss, student-logit gradient and theta's (reversed) gradient vs the release's formulation."""
  s, t, y = _logits(5, dtype=np.float64)
  cfg = recipes.base_config()
  method = methods.get("ctkd", cfg)
  progress = methods.Progress(step=jnp.int32(0), epoch=jnp.int32(epoch))
  with jax.enable_x64(True):
    total = lambda p, a: method.loss(p, {}, (a, {}), (jnp.asarray(t), {}), {"label": y}, progress)[0]
    params = {"theta": jnp.full((1,), 1.0, jnp.float64)}
    value, (g_theta, g_s) = jax.value_and_grad(total, argnums=(0, 1))(params, jnp.asarray(s))
    value, g_theta, g_s = float(value), np.asarray(g_theta["theta"]), np.asarray(g_s)
  st = torch.tensor(s, requires_grad=True)
  theta = torch.ones(1, dtype=torch.float64, requires_grad=True)
  temp = ref.ctkd_temperature(theta, ref.ctkd_lambda(epoch + 1))
  loss = 0.1 * ref.cross_entropy(st, torch.tensor(y, dtype=torch.long)) + 0.9 * ref.kd_batchmean(
      st, torch.tensor(t), temp)
  loss.backward()
  np.testing.assert_allclose(value, loss.item(), rtol=1e-8)
  np.testing.assert_allclose(g_s, st.grad.numpy(), rtol=1e-8, atol=1e-12 * np.abs(g_s).max())
  np.testing.assert_allclose(g_theta, theta.grad.numpy(), rtol=1e-8, atol=1e-14)
  # lambda < 0 once the curriculum starts: theta's gradient is the KD gradient reversed.
  lam = float(ctkd_lib.curriculum(jnp.int32(epoch), 0.0, -1.0, 10.0))
  assert lam == pytest.approx(ref.ctkd_lambda(epoch + 1), abs=1e-7) and lam < 0


def test_ctkd_with_logit_standardization_matches_torch_in_float64():
  """The LS switch on CTKD: both sides z-scored before the learned temperature. (In float32
  theta's gradient differs by ~1%: at T ~ 15 it is a small difference of large terms.)"""
  s, t, y = _logits(7, dtype=np.float64)
  cfg = recipes.base_config()
  cfg.ctkd.logit_standardization = True
  method = methods.get("ctkd", cfg)
  progress = methods.Progress(step=jnp.int32(0), epoch=jnp.int32(3))
  with jax.enable_x64(True):
    total = lambda p, a: method.loss(p, {}, (a, {}), (jnp.asarray(t), {}), {"label": y}, progress)[0]
    value, (g_theta, g_s) = jax.value_and_grad(total, argnums=(0, 1))(
        {"theta": jnp.ones((1,), jnp.float64)}, jnp.asarray(s))
    value, g_theta, g_s = float(value), np.asarray(g_theta["theta"]), np.asarray(g_s)
  st = torch.tensor(s, requires_grad=True)
  theta = torch.ones(1, dtype=torch.float64, requires_grad=True)
  temp = ref.ctkd_temperature(theta, ref.ctkd_lambda(4))
  loss = 0.1 * ref.cross_entropy(st, torch.tensor(y, dtype=torch.long)) + 0.9 * ref.kd_batchmean(
      ref.standardize(st), ref.standardize(torch.tensor(t)), temp)
  loss.backward()
  np.testing.assert_allclose(value, loss.item(), rtol=1e-8)
  np.testing.assert_allclose(g_s, st.grad.numpy(), rtol=1e-8, atol=1e-12 * np.abs(g_s).max())
  np.testing.assert_allclose(g_theta, theta.grad.numpy(), rtol=1e-8)


def test_ctkd_curriculum_runs_from_zero_to_minus_one_in_ten_epochs():
  lams = [float(ctkd_lib.curriculum(jnp.int32(e), 0.0, -1.0, 10.0)) for e in range(12)]
  np.testing.assert_allclose(lams, [ref.ctkd_lambda(e + 1) for e in range(12)], atol=1e-6)
  assert lams[0] > -0.05 and lams[9] == lams[11] == -1.0 and np.all(np.diff(lams) <= 0)


@pytest.mark.parametrize("theta", [-30.0, 0.0, 30.0])
@pytest.mark.parametrize("scale", [1e2, 1e4])
def test_ctkd_finite_at_extreme_logits_and_temperatures(theta, scale):
  """|logits| up to 1e4 and T from its floor (1) to its ceiling (21)."""
  s, t, y = _logits(6, batch=4, classes=10, scale=scale)
  method = methods.get("ctkd", recipes.base_config())
  progress = methods.Progress(step=jnp.int32(0), epoch=jnp.int32(20))
  total = lambda p, a: method.loss(p, {}, (a, {}), (t, {}), {"label": y}, progress)[0]
  value, grads = jax.value_and_grad(total, argnums=(0, 1))({"theta": jnp.full((1,), theta)}, s)
  assert np.isfinite(float(value)) and all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


def test_ctkd_config_carries_the_release_recipe_and_numbers():
  from experiments.repro import tables  # pylint: disable=import-outside-toplevel
  module = recipes.load_config_module("configs/ctkd_cifar.py")
  c = module.get_config()
  assert (c.method, c.teacher.arch, c.model) == ("ctkd", "resnet56", "resnet20")
  assert (c.ctkd.ce_weight, c.ctkd.kd_weight, c.ctkd.t_start, c.ctkd.t_range, c.ctkd.init) == (0.1, 0.9, 1.0, 20.0, 1.0)
  assert (c.ctkd.lambda_max, c.ctkd.lambda_min, c.ctkd.loops, c.optim.lr) == (0.0, -1.0, 10.0, 0.05)
  assert set(module.PAIRS) == set(tables.REPORTED["ctkd_cifar"]) == set(tables.TABLES["ctkd"])
  assert tables.REPORTED["ctkd_cifar"]["resnet56,resnet20"] == 71.19


def test_ctkd_ls_config_carries_the_releases_settings():
  from experiments.repro import tables  # pylint: disable=import-outside-toplevel
  module = recipes.load_config_module("configs/ctkd_ls_cifar.py")
  c = module.get_config("vgg13,vgg8")
  assert (c.method, c.ctkd.ce_weight, c.ctkd.kd_weight, c.ctkd.logit_standardization) == ("ctkd", 0.1, 9.0, True)
  assert set(module.PAIRS) == set(tables.REPORTED["ctkd_ls_cifar"]) == set(tables.TABLES["ls"])
  assert tables.REPORTED["ctkd_ls_cifar"]["resnet32x4,resnet8x4"] == 76.67
