"""WKD (NeurIPS 2024): WKD-L (Sinkhorn) and WKD-F (Gaussian WD) vs its release in float64, the cost
matrix, the weight decay schedule, extreme logits, configs. Its 2-epoch train on mocked CIFAR is in
tests/test_recent_methods_train.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kdjax import methods, recipes
from kdjax.errors import UserError
from kdjax.methods import wkd as wkd_lib
from tests import parity
from tests.torch_reference import losses as ref


def _logits(seed, b=6, c=12, scale=3.0):
  rng = np.random.default_rng(seed)
  z_s, z_t = scale * rng.standard_normal((2, b, c))
  cost = rng.uniform(0.0, 1.0, (c, c))  # not symmetric: which side of K each update uses matters
  return z_s, z_t, cost, rng.integers(0, c, b)


@pytest.mark.parametrize("temperature,gamma,iters", [(8.0, 600.0, 10), (4.0, 60.0, 3), (2.0, 1.0, 30)])
def test_wkd_logit_matches_the_release_in_float64(temperature, gamma, iters):
  z_s, z_t, cost, y = _logits(0)
  with jax.enable_x64(True):
    fn = lambda z: sum(wkd_lib.wkd_logit_loss(z, jnp.asarray(z_t), jnp.asarray(y, jnp.int32), jnp.asarray(cost),
                                              temperature, gamma, 0.05, iters))
    value, grad = jax.value_and_grad(fn)(jnp.asarray(z_s))
  zs = torch.tensor(z_s, requires_grad=True)
  loss = ref.wkd_logit(zs, torch.tensor(z_t), torch.tensor(y), torch.tensor(cost), temperature, gamma, 0.05, iters)
  loss.backward()
  np.testing.assert_allclose(float(value), loss.item(), rtol=1e-9)
  np.testing.assert_allclose(np.asarray(grad), zs.grad.numpy(), rtol=1e-7, atol=1e-12 * np.abs(zs.grad.numpy()).max())


@pytest.mark.parametrize("grid,shape", [(1, (8, 8, 5)), (4, (8, 8, 5)), (3, (7, 7, 4))])
def test_wkd_feature_matches_the_release_in_float64(grid, shape):
  rng = np.random.default_rng(1)
  f_s, f_t = rng.standard_normal((2, 3, *shape))
  with jax.enable_x64(True):
    fn = lambda f: wkd_lib.wkd_feature_loss(f, jnp.asarray(f_t), grid, 1e-5, 4.0)
    value, grad = jax.value_and_grad(fn)(jnp.asarray(f_s))
  fs = torch.tensor(parity.nchw(f_s), requires_grad=True)
  loss = ref.wkd_feature(fs, torch.tensor(parity.nchw(f_t)), 1e-5, grid, 4.0)
  loss.backward()
  np.testing.assert_allclose(float(value), loss.item(), rtol=1e-10)
  np.testing.assert_allclose(np.asarray(grad), parity.nhwc(fs.grad.numpy()), rtol=1e-8, atol=1e-14)


def test_the_cost_comes_from_the_teachers_classifier_or_a_file(tmp_path):
  rng = np.random.default_rng(2)
  kernel = rng.standard_normal((7, 10))  # (features, classes)
  cost = wkd_lib.category_cost({"params": {"fc": {"kernel": kernel, "bias": np.zeros(10)}}}, 10, "", 1.0)
  w = kernel.T / np.linalg.norm(kernel.T, axis=1, keepdims=True)
  expected = np.maximum(1 - np.exp(-(1 - w @ w.T)), 0) + 1e-8  # the release's fc cost, sharpened
  np.testing.assert_allclose(np.asarray(cost), expected, rtol=1e-5, atol=1e-6)
  path = str(tmp_path / "cost.npy")
  np.save(path, np.full((10, 10), 0.5))
  np.testing.assert_allclose(np.asarray(wkd_lib.category_cost(None, 10, path, 0.0)), 0.5 + 1e-8)
  np.save(path, np.zeros((3, 3)))
  with pytest.raises(UserError, match="needs 10 x 10"):
    wkd_lib.category_cost(None, 10, path, 0.0)


def test_the_weights_decay_as_the_release_after_epoch_150():
  w = [float(wkd_lib.decayed(600.0, e - 1, 150.0, 240.0)) for e in (1, 150, 151, 195, 240)]
  assert w[:2] == [600.0, 600.0]
  np.testing.assert_allclose(w[2:], [300 * (1 + np.cos(np.pi / 90)), 300.0, 0.0], atol=1e-4)


@pytest.mark.parametrize("scale", [1e2, 1e4])
@pytest.mark.parametrize("temperature", [0.5, 8.0, 10.0])
def test_wkd_logit_finite_at_extreme_logits(scale, temperature):
  z_s, z_t, cost, y = _logits(3, scale=scale)
  fn = lambda z: sum(wkd_lib.wkd_logit_loss(z, jnp.asarray(z_t, jnp.float32), jnp.asarray(y, jnp.int32),
                                            jnp.asarray(cost, jnp.float32), temperature, 600.0, 0.05, 10))
  value, grad = jax.value_and_grad(fn)(jnp.asarray(z_s, jnp.float32))
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))


def test_the_method_combines_both_terms_and_trains_a_regressor_for_wkd_f():
  module = recipes.load_config_module("configs/wkd_cifar.py")
  c = module.get_config("resnet32x4,resnet8x4,lf")
  assert (c.wkd.logit_weight, c.wkd.feat_weight, c.wkd.temperature, c.wkd.mean_cov_ratio) == (200.0, 0.08, 8.0, 8.0)
  method = methods.get("wkd", c)
  rng = np.random.default_rng(4)
  f_s, f_t = np.abs(rng.standard_normal((2, 4, 8, 8, 16))).astype(np.float32)
  z_s, z_t = rng.standard_normal((2, 4, 100)).astype(np.float32)
  teacher_vars = {"params": {"fc": {"kernel": rng.standard_normal((16, 100)), "bias": np.zeros(100)}}}
  s_out, t_out = (z_s, {"feats": [f_s]}), (z_t, {"feats": [f_t]})
  params, state = method.init(jax.random.key(0), s_out, t_out, {"teacher_variables": teacher_vars})
  assert set(params) == {"conv_reg"} and state["cost"].shape == (100, 100)
  progress = methods.Progress(step=jnp.int32(0), epoch=jnp.int32(0))
  total, metrics, _ = method.loss(params, state, s_out, t_out, {"label": np.arange(4, dtype=np.int32)}, progress)
  parts = metrics["loss_ce"] + metrics["loss_wkd_target"] + metrics["loss_wkd_logit"] + 0.08 * metrics["loss_wkd_feat"]
  np.testing.assert_allclose(float(total), float(parts), rtol=1e-5)
  f = module.get_config("wrn_40_2,ShuffleV1,f")
  assert (f.wkd.logit_weight, f.wkd.feat_weight, f.wkd.grid, f.wkd.mean_cov_ratio, f.optim.lr) == (0.0, 0.3, 4, 3.0, 0.01)
  c.wkd.logit_weight = c.wkd.feat_weight = 0.0
  with pytest.raises(UserError, match="both 0"):
    methods.get("wkd", c)
