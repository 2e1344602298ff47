"""DOT (ICCV 2023): the optimizer against a PyTorch transcription, the step's gradient groups, configs.
Full train-step parity (KD + DOT vs PyTorch) is in tests/test_step_parity.py; its 2-epoch train on
mocked CIFAR in tests/test_recent_methods_train.py."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from kdjax import methods, recipes, torch_optim
from kdjax.errors import UserError
from kdjax.methods import base, dot as dot_lib
from kdjax.train import step as step_lib
from tests.torch_reference import optimizers


def _trees(seed, n):
  rng = np.random.default_rng(seed)
  return [{"a": rng.standard_normal((3, 4)), "b": rng.standard_normal((5,))} for _ in range(n)]


def test_dot_sgd_matches_the_pytorch_transcription_over_steps_and_an_lr_drop():
  params, = _trees(0, 1)
  grads = _trees(1, 10)
  lr_fn = torch_optim.step_schedule(0.05, (1,), 0.1, steps_per_epoch=4)  # x0.1 from step 4
  with jax.enable_x64(True):
    tx = dot_lib.dot_sgd(lr_fn, 0.9, 0.075, 5e-4)
    p = jax.tree.map(jnp.asarray, params)
    state = tx.init(p)
    for k in range(0, 10, 2):
      updates, state = tx.update((grads[k], grads[k + 1]), state, p)
      p = optax.apply_updates(p, updates)
  tp = [torch.tensor(params["a"]), torch.tensor(params["b"])]
  ref = optimizers.DOT(tp, lr=0.05, momentum=0.9, delta=0.075, weight_decay=5e-4)
  for k in range(0, 10, 2):
    ref.lr = 0.05 if k // 2 < 4 else 0.005
    ref.step([torch.tensor(grads[k][n]) for n in "ab"], [torch.tensor(grads[k + 1][n]) for n in "ab"])
  for n, t in zip("ab", tp):
    np.testing.assert_allclose(np.asarray(p[n]), t.numpy(), rtol=1e-12, atol=1e-14)


def test_dot_with_no_delta_is_sgd_on_the_summed_gradient():
  """delta = 0: one momentum for both buffers, so DOT is PyTorch SGD on g_task + g_distill."""
  params, = _trees(2, 1)
  grads = _trees(3, 6)
  with jax.enable_x64(True):
    dot, sgd = dot_lib.dot_sgd(0.1, 0.9, 0.0, 1e-3), torch_optim.sgd(0.1, 0.9, 1e-3)
    p1 = p2 = jax.tree.map(jnp.asarray, params)
    s1, s2 = dot.init(p1), sgd.init(p2)
    for k in range(0, 6, 2):
      u1, s1 = dot.update((grads[k], grads[k + 1]), s1, p1)
      u2, s2 = sgd.update(jax.tree.map(jnp.add, grads[k], grads[k + 1]), s2, p2)
      p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), p1, p2)


def test_two_gradient_groups_give_each_term_its_own_gradient_from_one_forward():
  def loss_fn(p):
    return (jnp.sum(p["w"] ** 2), jnp.sum(jnp.sin(p["w"]))), {"aux": 1}

  p = {"w": jnp.linspace(-1.0, 1.0, 5)}
  (loss, aux), (g1, g2) = step_lib._value_and_grads(loss_fn, p, 2)  # pylint: disable=protected-access
  np.testing.assert_allclose(loss, jnp.sum(p["w"] ** 2) + jnp.sum(jnp.sin(p["w"])), rtol=1e-6)
  np.testing.assert_allclose(g1["w"], 2 * p["w"], rtol=1e-6)
  np.testing.assert_allclose(g2["w"], jnp.cos(p["w"]), rtol=1e-6)
  assert aux == {"aux": 1}
  with pytest.raises(ValueError, match="3 gradient groups returned 2"):
    step_lib._value_and_grads(loss_fn, p, 3)  # pylint: disable=protected-access


def _config(**dot):
  c = recipes.load_config_module("configs/dot_cifar.py").get_config()
  for k, v in dot.items():
    c.dot[k] = v
  return c


def test_the_dot_method_splits_its_distillers_loss_and_brings_its_optimizer():
  c = _config()
  m = methods.get("dot", c)
  kd = methods.get("kd", c)
  assert m.grad_groups == 2 and m.optimizer is not None and m.needs_teacher and m.multi_teacher
  rng = np.random.default_rng(0)
  s, t = rng.standard_normal((2, 6, 100)).astype(np.float32)
  y = rng.integers(0, 100, 6).astype(np.int32)
  progress = base.Progress(step=jnp.int32(0), epoch=jnp.int32(0))
  (task, distill), metrics, _ = m.loss({}, {}, (s, {}), (t, {}), {"label": y}, progress)
  total, kd_metrics, _ = kd.loss({}, {}, (s, {}), (t, {}), {"label": y}, progress)
  np.testing.assert_allclose(task, 0.1 * metrics["loss_ce"], rtol=1e-6)
  np.testing.assert_allclose(distill, 0.9 * metrics["loss_kd"], rtol=1e-6)
  assert float(task + distill) == float(total) and metrics == kd_metrics
  (tx, lr_fn) = m.optimizer(10)
  assert float(lr_fn(0)) == pytest.approx(0.05) and float(lr_fn(1500)) == pytest.approx(0.005)


def test_dot_configs_carry_the_release_settings():
  module = recipes.load_config_module("configs/dot_cifar.py")
  assert set(module.PAIRS) == {"resnet32x4,resnet8x4", "vgg13,vgg8", "resnet32x4,ShuffleV2"}
  c = module.get_config("resnet32x4,ShuffleV2")
  assert (c.method, c.dot.distiller, c.dot.delta, c.optim.lr, c.optim.momentum) == ("dot", "kd", 0.075, 0.01, 0.9)
  assert (c.kd.temperature, c.kd.ce_weight, c.kd.kd_weight) == (4.0, 0.1, 0.9)
  d = module.get_config("vgg13,vgg8,dkd")
  assert d.dot.distiller == "dkd" and d.dkd.beta == 6.0
  assert methods.get("dot", d).split_loss is None and methods.get("dot", d).grad_groups == 2


@pytest.mark.parametrize("change,message", [
    (dict(distiller="fitnet"), "CE \\+ a distillation term"),
    (dict(distiller="dot"), "name the method"),
    (dict(delta=0.2), "distillation 1.1\\) must lie in \\[0, 1\\)"),
    (dict(delta=-0.1), "choose delta in \\[0, 0.1\\)"),
])
def test_dot_refuses_what_it_cannot_train(change, message):
  with pytest.raises(UserError, match=message):
    methods.get("dot", _config(**change))


def test_dot_refuses_nesterov():
  c = _config()
  c.optim.nesterov = True
  with pytest.raises(UserError, match="nesterov"):
    methods.get("dot", c)
