"""MLKD (CVPR 2023): the loss vs its release in float64 (with and without logit standardization),
the masks' median rule, the two-view step (weak and strong views, both networks on each), configs.
RandAugment itself is tested against Pillow in tests/test_randaugment.py; the 2-epoch train on
mocked CIFAR is in tests/test_recent_methods_train.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kdjax import methods, recipes, train
from kdjax.methods import mlkd as mlkd_lib
from tests.torch_reference import losses as ref

PROGRESS = methods.Progress(step=jnp.int32(0), epoch=jnp.int32(0))


def _logits(seed, b=10, c=20):
  rng = np.random.default_rng(seed)
  return tuple(3 * rng.standard_normal((4, b, c))) + (rng.integers(0, c, b),)


@pytest.mark.parametrize("ls", [False, True])
def test_mlkd_loss_matches_the_release_in_float64(ls):
  s_w, s_s, t_w, t_s, y = _logits(0)
  cfg = recipes.base_config()
  cfg.mlkd.logit_standardization = ls
  method = methods.get("mlkd", cfg)
  assert method.views == 2 and method.view_forward == "each" and method.view_transforms[0] is None
  with jax.enable_x64(True):
    def total(a, b):
      outs = [(a, {}), (b, {})]
      return method.loss({}, {}, outs, [(jnp.asarray(t_w), {}), (jnp.asarray(t_s), {})],
                         {"label": jnp.asarray(y, jnp.int32)}, PROGRESS)[0]
    value, (g_w, g_s) = jax.value_and_grad(total, argnums=(0, 1))(jnp.asarray(s_w), jnp.asarray(s_s))
  a, b = torch.tensor(s_w, requires_grad=True), torch.tensor(s_s, requires_grad=True)
  loss = ref.mlkd(a, b, torch.tensor(t_w), torch.tensor(t_s), torch.tensor(y), logit_stand=ls)
  loss.backward()
  np.testing.assert_allclose(float(value), loss.item(), rtol=1e-10)
  np.testing.assert_allclose(np.asarray(g_w), a.grad.numpy(), rtol=1e-8, atol=1e-14)
  np.testing.assert_allclose(np.asarray(g_s), b.grad.numpy(), rtol=1e-8, atol=1e-14)


def test_the_masks_keep_the_less_confident_half_with_numpys_median():
  s_w, s_s, t_w, t_s, _ = _logits(1, b=9)
  terms = mlkd_lib.mlkd_terms(s_w, s_s, t_w, t_s, 4.0)
  p = np.exp(t_w) / np.exp(t_w).sum(1, keepdims=True)
  np.testing.assert_allclose(float(terms["mask"]), np.mean(p.max(1) <= np.percentile(p.max(1), 50)), rtol=1e-6)
  np.testing.assert_allclose(float(terms["class_mask"]), np.mean(p.sum(0) <= np.percentile(p.sum(0), 50)), rtol=1e-6)


@pytest.mark.parametrize("scale", [1e2, 1e4])
@pytest.mark.parametrize("temperature", [0.5, 10.0])
def test_mlkd_finite_at_extreme_logits(scale, temperature):
  *logits, y = _logits(2)
  s_w, s_s, t_w, t_s = (np.float32(scale) * a.astype(np.float32) for a in logits)
  cfg = recipes.base_config()
  cfg.mlkd.temperature = temperature
  method = methods.get("mlkd", cfg)
  fn = lambda a, b: method.loss({}, {}, [(a, {}), (b, {})], [(t_w, {}), (t_s, {})], {"label": y}, PROGRESS)[0]
  value, grads = jax.value_and_grad(fn, argnums=(0, 1))(jnp.asarray(s_w), jnp.asarray(s_s))
  assert np.isfinite(float(value)) and all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def test_the_step_gives_each_network_a_weak_and_a_strong_view():
  """select_batch with MLKD's views: view 0 crop/flip only (as the one-view step), view 1 the same
  crop/flip key split further and RandAugmented; the teacher gets both."""
  from kdjax.data import augment  # pylint: disable=import-outside-toplevel
  from kdjax.data import randaugment  # pylint: disable=import-outside-toplevel
  from kdjax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  method = methods.get("mlkd", recipes.base_config())
  images = jnp.asarray(np.random.default_rng(3).integers(0, 256, (16, 32, 32, 3)), jnp.uint8)
  mesh = train.make_mesh(jax.devices()[:1])
  spec = step_lib.StepSpec(model=None, passes=(), txs=(), lr_fn=None, teacher_forward=None, batch_size=8,
                           steps_per_epoch=2, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_padding=4,
                           flip=True, aug_key=jax.random.key(0),
                           batch_sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")),
                           views=2, view_transforms=method.view_transforms, view_forward="each")
  key = jax.random.key(5)
  x, x_teacher, labels, idx = step_lib.select_batch(spec, 0, images, jnp.arange(16), jnp.arange(16), key)
  assert isinstance(x, list) and len(x) == 2 and x_teacher is x
  k0, k1 = jax.random.split(key, 2)
  raw = images[:8]
  weak = augment.normalize(augment.random_crop_flip(k0, raw, 4, True), spec.mean, spec.std)
  crop_key, ra_key = jax.random.split(k1)
  strong = augment.normalize(randaugment.rand_augment(ra_key, augment.random_crop_flip(crop_key, raw, 4, True)),
                             spec.mean, spec.std)
  np.testing.assert_array_equal(x[0], weak)
  np.testing.assert_array_equal(x[1], strong)
  assert not np.array_equal(x[0], x[1]) and labels.tolist() == list(range(8))


def test_configs_carry_both_releases_protocols():
  module = recipes.load_config_module("configs/mlkd_cifar.py")
  assert len(module.PAIRS) == 14
  c = module.get_config("resnet32x4,resnet8x4")
  assert (c.method, c.epochs, c.optim.lr, c.mlkd.temperature, c.mlkd.ce_weight, c.mlkd.kd_weight) == (
      "mlkd", 240, 0.025, 4.0, 0.1, 0.9)
  assert module.get_config("resnet32x4,ShuffleV2").epochs == 960
  ls = module.get_config("vgg13,vgg8,ls")
  assert (ls.epochs, ls.optim.lr, ls.mlkd.logit_standardization, ls.mlkd.temperature, ls.mlkd.kd_weight) == (
      480, 0.01, True, 2.0, 6.0)
  assert module.get_config("resnet32x4,wrn_16_2").epochs == 480  # no MLKD yaml: the LS release's
