"""SRD (SRRL, ICLR 2021) and Tf-KD (CVPR 2020): PyTorch parity in float64, their configs and refusals.
Their 2-epoch trains on mocked CIFAR are in tests/test_recent_methods_train.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kdjax import methods, recipes
from kdjax.errors import UserError
from tests.torch_reference import losses as ref

PROGRESS = methods.Progress(step=jnp.int32(0), epoch=jnp.int32(0))


def _outs(seed, b=6, s_n=12, t_n=20, classes=100):
  rng = np.random.default_rng(seed)
  pooled_s, pooled_t = np.abs(rng.standard_normal((b, s_n))), np.abs(rng.standard_normal((b, t_n)))
  z_s, z_t = 3 * rng.standard_normal((2, b, classes))
  fc = {"kernel": 0.1 * rng.standard_normal((t_n, classes)), "bias": 0.1 * rng.standard_normal(classes)}
  return pooled_s, pooled_t, z_s, z_t, fc, rng.integers(0, classes, b).astype(np.int32)


def test_srd_matches_the_release_in_float64():
  """CE + KD + (MSE(h, f_t) + MSE(W_t h + b_t, z_t)): value, gradients (student, connector), BN stats."""
  pooled_s, pooled_t, z_s, z_t, fc, y = _outs(0)
  method = methods.get("srd", recipes.base_config())
  assert method.needs_teacher_variables
  with jax.enable_x64(True):
    t_out = (jnp.asarray(z_t), {"pooled": jnp.asarray(pooled_t)})
    teacher_vars = {"params": {"fc": jax.tree.map(jnp.asarray, fc)}}
    params, state = method.init(jax.random.key(0), (jnp.asarray(z_s), {"pooled": jnp.asarray(pooled_s)}), t_out,
                                {"teacher_variables": teacher_vars})
    params, state = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, state))

    def total(p, f, z):
      out = method.loss(p, state, (z, {"pooled": f}), t_out, {"label": y}, PROGRESS)
      return out[0], out[2]

    (value, new_state), (g_p, g_f, g_z) = jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True)(
        params, jnp.asarray(pooled_s), jnp.asarray(z_s))
  connector = ref.srrl_connector(pooled_s.shape[1], pooled_t.shape[1]).double().train()
  cls_t = torch.nn.Linear(pooled_t.shape[1], 100).double()
  with torch.no_grad():
    connector[0].weight.copy_(torch.tensor(np.asarray(params["connector"]["conv"]["kernel"]).transpose(3, 2, 0, 1)))
    cls_t.weight.copy_(torch.tensor(fc["kernel"].T))
    cls_t.bias.copy_(torch.tensor(fc["bias"]))
  fs, zs = torch.tensor(pooled_s, requires_grad=True), torch.tensor(z_s, requires_grad=True)
  zt = torch.tensor(z_t)
  loss = (ref.cross_entropy(zs, torch.tensor(y, dtype=torch.long)) + ref.kd(zs, zt, 4.0)
          + ref.srrl(connector, cls_t, fs, torch.tensor(pooled_t), zt))
  loss.backward()
  np.testing.assert_allclose(float(value), loss.item(), rtol=1e-10)
  np.testing.assert_allclose(np.asarray(g_f), fs.grad.numpy(), rtol=1e-8, atol=1e-14)
  np.testing.assert_allclose(np.asarray(g_z), zs.grad.numpy(), rtol=1e-8, atol=1e-14)
  np.testing.assert_allclose(np.asarray(g_p["connector"]["conv"]["kernel"]),
                             connector[0].weight.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-8, atol=1e-14)
  np.testing.assert_allclose(np.asarray(g_p["connector"]["bn"]["scale"]), connector[1].weight.grad.numpy(),
                             rtol=1e-8, atol=1e-14)
  bn = new_state["batch_stats"]["bn"]
  np.testing.assert_allclose(np.asarray(bn["mean"]), connector[1].running_mean.numpy(), rtol=1e-10)
  np.testing.assert_allclose(np.asarray(bn["var"]), connector[1].running_var.numpy(), rtol=1e-10)
  # The teacher's classifier is state, copied once: never a trainable parameter.
  assert "teacher_classifier" in new_state and set(g_p) == {"connector"}


def test_srd_refuses_a_teacher_whose_classifier_does_not_read_its_representation():
  pooled_s, pooled_t, z_s, z_t, fc, _ = _outs(1)
  method = methods.get("srd", recipes.base_config())
  wrong = {"params": {"linear": {"kernel": np.zeros((7, 100)), "bias": np.zeros(100)}}}
  with pytest.raises(UserError, match="reads 7 features"):
    method.init(jax.random.key(0), (z_s, {"pooled": pooled_s}), (z_t, {"pooled": pooled_t}),
                {"teacher_variables": wrong})


@pytest.mark.parametrize("alpha,temperature,multiplier", [(0.95, 20.0, 1.0), (0.95, 6.0, 50.0), (0.4, 1.0, 1.0)])
def test_tfkd_self_matches_the_release_in_float64(alpha, temperature, multiplier):
  _, _, z_s, z_t, _, y = _outs(2)
  cfg = recipes.base_config()
  cfg.tfkd.alpha, cfg.tfkd.temperature, cfg.tfkd.multiplier = alpha, temperature, multiplier
  method = methods.get("tfkd", cfg)
  assert method.needs_teacher
  with jax.enable_x64(True):
    fn = lambda z: method.loss({}, {}, (z, {}), (jnp.asarray(z_t), {}), {"label": y}, PROGRESS)[0]
    value, grad = jax.value_and_grad(fn)(jnp.asarray(z_s))
  zs = torch.tensor(z_s, requires_grad=True)
  loss = ref.tfkd_self(zs, torch.tensor(z_t), torch.tensor(y, dtype=torch.long), alpha, temperature, multiplier)
  loss.backward()
  np.testing.assert_allclose(float(value), loss.item(), rtol=1e-10)
  np.testing.assert_allclose(np.asarray(grad), zs.grad.numpy(), rtol=1e-8, atol=1e-15)


@pytest.mark.parametrize("alpha,temperature,multiplier", [(0.95, 40.0, 1.0), (0.1, 20.0, 100.0)])
def test_tfkd_reg_matches_the_release_in_float64(alpha, temperature, multiplier):
  _, _, z_s, _, _, y = _outs(3)
  cfg = recipes.base_config()
  cfg.tfkd.mode, cfg.tfkd.alpha, cfg.tfkd.temperature, cfg.tfkd.multiplier = "reg", alpha, temperature, multiplier
  method = methods.get("tfkd", cfg)
  assert not method.needs_teacher
  with jax.enable_x64(True):
    fn = lambda z: method.loss({}, {}, (z, {}), None, {"label": y}, PROGRESS)[0]
    value, grad = jax.value_and_grad(fn)(jnp.asarray(z_s))
  zs = torch.tensor(z_s, requires_grad=True)
  loss = ref.tfkd_reg(zs, torch.tensor(y, dtype=torch.long), alpha, temperature, multiplier)
  loss.backward()
  np.testing.assert_allclose(float(value), loss.item(), rtol=1e-10)
  np.testing.assert_allclose(np.asarray(grad), zs.grad.numpy(), rtol=1e-8, atol=1e-15)


@pytest.mark.parametrize("mode", ["self", "reg"])
@pytest.mark.parametrize("scale", [1e2, 1e4])
def test_tfkd_finite_at_extreme_logits(mode, scale):
  _, _, z_s, z_t, _, y = _outs(4)
  cfg = recipes.base_config()
  cfg.tfkd.mode = mode
  method = methods.get("tfkd", cfg)
  t_out = (np.float32(scale) * z_t.astype(np.float32), {}) if mode == "self" else None
  fn = lambda z: method.loss({}, {}, (z, {}), t_out, {"label": y}, PROGRESS)[0]
  value, grad = jax.value_and_grad(fn)(jnp.asarray(scale * z_s, jnp.float32))
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))


def test_configs_carry_the_recipes():
  tfkd = recipes.load_config_module("configs/tfkd_cifar.py")
  c = tfkd.get_config("ShuffleV2,ShuffleV2")
  assert (c.method, c.teacher.arch, c.tfkd.mode, c.tfkd.alpha, c.tfkd.temperature, c.optim.lr) == (
      "tfkd", "ShuffleV2", "self", 0.95, 20.0, 0.01)
  r = tfkd.get_config("resnet8x4,resnet8x4,reg")
  assert (r.tfkd.mode, r.tfkd.alpha, r.tfkd.temperature, r.tfkd.multiplier, r.teacher.arch) == (
      "reg", 0.1, 20.0, 100.0, "")
  assert all(p.split(",")[0] == p.split(",")[1] for p in tfkd.PAIRS)
  srd = recipes.load_config_module("configs/srd_cifar.py").get_config("resnet32x4,vgg8")
  assert (srd.method, srd.srd.ce_weight, srd.srd.kd_weight, srd.srd.srd_weight, srd.srd.temperature) == (
      "srd", 1.0, 1.0, 1.0, 4.0)


def test_tfkd_refuses_an_unknown_mode():
  cfg = recipes.base_config()
  cfg.tfkd.mode = "selfish"
  with pytest.raises(UserError, match="valid: self, reg"):
    methods.get("tfkd", cfg)


@pytest.mark.parametrize("scale", [1e2, 1e4])
@pytest.mark.parametrize("temperature", [0.5, 10.0])
def test_srd_finite_at_extreme_logits(scale, temperature):
  pooled_s, pooled_t, z_s, z_t, fc, y = _outs(6)
  cfg = recipes.base_config()
  cfg.srd.temperature = temperature
  method = methods.get("srd", cfg)
  t_out = (jnp.asarray(scale * z_t, jnp.float32), {"pooled": jnp.asarray(pooled_t, jnp.float32)})
  params, state = method.init(jax.random.key(0), (jnp.asarray(z_s, jnp.float32), {"pooled": jnp.asarray(pooled_s, jnp.float32)}),
                              t_out, {"teacher_variables": {"params": {"fc": fc}}})
  fn = lambda z: method.loss(params, state, (z, {"pooled": jnp.asarray(pooled_s, jnp.float32)}), t_out,
                             {"label": y}, PROGRESS)[0]
  value, grad = jax.value_and_grad(fn)(jnp.asarray(scale * z_s, jnp.float32))
  assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
