"""ICKD-C: PyTorch parity of the loss and its embedding (float64), degenerate maps, the config."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kdjax import methods, recipes
from kdjax.methods import ickd as ickd_lib
from tests.torch_reference import losses as ref


def _maps(seed, b=4, s=(8, 8, 6), t=(4, 4, 10), dtype=np.float64):
  rng = np.random.default_rng(seed)
  f_s = np.maximum(rng.standard_normal((b, *s)), 0).astype(dtype)  # post-ReLU maps, NHWC
  f_t = np.maximum(rng.standard_normal((b, *t)), 0).astype(dtype)
  z_s, z_t = rng.standard_normal((2, b, 100)).astype(dtype) * 3
  return f_s, f_t, z_s, z_t, rng.integers(0, 100, b).astype(np.int32)


def _outs(f, z):
  return (z, {"feats": [f]})


@pytest.mark.parametrize("kd_weight", [1.0, 0.0])
def test_ickd_method_matches_torch_in_float64(kd_weight):
  """CE + KD + 2.5 * ICKD: value, student-map and logit gradients, embedding gradients, BN statistics."""
  f_s, f_t, z_s, z_t, y = _maps(0)
  cfg = recipes.base_config()
  cfg.ickd.kd_weight = kd_weight
  method = methods.get("ickd", cfg)
  progress = methods.Progress(step=jnp.int32(0), epoch=jnp.int32(0))
  with jax.enable_x64(True):
    params, state = method.init(jax.random.key(0), _outs(jnp.asarray(f_s), jnp.asarray(z_s)),
                                _outs(jnp.asarray(f_t), jnp.asarray(z_t)), {})
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    state = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state)

    def total(p, f, z):
      out = method.loss(p, state, _outs(f, z), _outs(jnp.asarray(f_t), jnp.asarray(z_t)), {"label": y}, progress)
      return out[0], out[2]

    (value, new_state), (g_p, g_f, g_z) = jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True)(
        params, jnp.asarray(f_s), jnp.asarray(z_s))
  kernel = np.asarray(params["embed_s"]["conv2d"]["kernel"])  # (1, 1, C_s, C_t)
  conv = torch.nn.Conv2d(f_s.shape[-1], f_t.shape[-1], 1, bias=False).double()
  bn = torch.nn.BatchNorm2d(f_t.shape[-1]).double().train()
  with torch.no_grad():
    conv.weight.copy_(torch.tensor(kernel.transpose(3, 2, 0, 1)))
  fs = torch.tensor(f_s.transpose(0, 3, 1, 2), requires_grad=True)
  zs = torch.tensor(z_s, requires_grad=True)
  loss = (ref.cross_entropy(zs, torch.tensor(y, dtype=torch.long))
          + kd_weight * ref.kd(zs, torch.tensor(z_t), 4.0)
          + 2.5 * ref.ickd(bn(conv(fs)), torch.tensor(f_t.transpose(0, 3, 1, 2))))
  loss.backward()
  np.testing.assert_allclose(float(value), loss.item(), rtol=1e-8)
  np.testing.assert_allclose(np.asarray(g_f), fs.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-8, atol=1e-14)
  np.testing.assert_allclose(np.asarray(g_z), zs.grad.numpy(), rtol=1e-8, atol=1e-14)
  np.testing.assert_allclose(np.asarray(g_p["embed_s"]["conv2d"]["kernel"]),
                             conv.weight.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-8, atol=1e-14)
  np.testing.assert_allclose(np.asarray(g_p["embed_s"]["l2norm"]["scale"]), bn.weight.grad.numpy(), rtol=1e-8,
                             atol=1e-14)
  np.testing.assert_allclose(np.asarray(new_state["batch_stats"]["l2norm"]["mean"]), bn.running_mean.numpy(),
                             rtol=1e-8, atol=1e-14)


def test_gram_rows_are_unit_and_blind_to_the_maps_size():
  f_s, f_t, *_ = _maps(1, dtype=np.float32)
  g = np.asarray(ickd_lib.channel_correlation(f_t))
  assert g.shape == (4, 10, 10)
  np.testing.assert_allclose(np.linalg.norm(g, axis=2), 1.0, rtol=1e-5)
  assert float(ickd_lib.ickd_loss(jnp.asarray(f_t), jnp.asarray(f_t))) == 0.0
  bigger = np.repeat(np.repeat(f_t, 2, axis=1), 2, axis=2)  # 4x the positions, same correlations
  np.testing.assert_allclose(ickd_lib.channel_correlation(bigger), g, rtol=1e-5)


@pytest.mark.parametrize("case", ["zero_student", "zero_both", "huge"])
def test_ickd_finite_at_degenerate_maps(case):
  f_s, f_t, *_ = _maps(2, s=(4, 4, 10), dtype=np.float32)
  if case != "huge":
    f_s = np.zeros_like(f_s)
    f_t = np.zeros_like(f_t) if case == "zero_both" else f_t
  else:
    f_s, f_t = 1e4 * f_s, 1e4 * f_t
  value, grad = jax.value_and_grad(ickd_lib.ickd_loss)(jnp.asarray(f_s), jnp.asarray(f_t))
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))


def test_ickd_config_carries_the_release_recipe_and_numbers():
  from experiments.repro import tables  # pylint: disable=import-outside-toplevel
  module = recipes.load_config_module("configs/ickd_cifar.py")
  c = module.get_config()
  assert (c.method, c.teacher.arch, c.model) == ("ickd", "resnet32x4", "resnet8x4")
  assert (c.ickd.ce_weight, c.ickd.kd_weight, c.ickd.ickd_weight, c.ickd.temperature) == (1.0, 1.0, 2.5, 4.0)
  assert module.get_config("vgg13,vgg8,kd_weight=0").ickd.kd_weight == 0.0
  assert set(module.PAIRS) == set(tables.REPORTED["ickd_cifar"]) == set(tables.TABLES["ickd"])
  assert tables.REPORTED["ickd_cifar"]["resnet32x4,resnet8x4"] == 75.48
  assert "75.25" in tables.REPORTED_NOTES["ickd_cifar"]["resnet32x4,resnet8x4"]
