"""SimKD (CVPR 2022): loss and projector vs its release in float64, the deployed student (projector +
the teacher's classifier) vs PyTorch, its export to PyTorch, the config.
Its 2-epoch train on mocked CIFAR is in tests/test_recent_methods_train.py."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kdjax import convert, methods, models, recipes
from kdjax.errors import UserError
from kdjax.models import simkd as simkd_model
from tests import parity
from tests.torch_reference import losses as ref
from tests.torch_reference import models as torch_models

PROGRESS = methods.Progress(step=jnp.int32(0), epoch=jnp.int32(0))


def _case(seed, s_shape, t_shape, b=4, classes=10):
  rng = np.random.default_rng(seed)
  f_s = np.maximum(rng.standard_normal((b, *s_shape)), 0)
  f_t = np.maximum(rng.standard_normal((b, *t_shape)), 0)
  fc = {"kernel": 0.1 * rng.standard_normal((t_shape[-1], classes)), "bias": 0.1 * rng.standard_normal(classes)}
  z_s, z_t = rng.standard_normal((2, b, classes))
  return f_s, f_t, fc, z_s, z_t, rng.integers(0, classes, b).astype(np.int32)


def _torch_projector(params, s_n, t_n):
  proj = ref.SimKDProjector(s_n, t_n).double().train()
  with torch.no_grad():
    for name, module in proj.transfer.named_children():
      if name in params:
        if isinstance(module, torch.nn.Conv2d):
          module.weight.copy_(torch.tensor(np.asarray(params[name]["kernel"]).transpose(3, 2, 0, 1)))
        else:
          module.weight.copy_(torch.tensor(np.asarray(params[name]["scale"])))
          module.bias.copy_(torch.tensor(np.asarray(params[name]["bias"])))
  return proj


@pytest.mark.parametrize("s_shape,t_shape", [((8, 8, 6), (4, 4, 12)), ((4, 4, 6), (8, 8, 12)), ((4, 4, 6), (4, 4, 8))])
def test_simkd_loss_and_projector_match_the_release_in_float64(s_shape, t_shape):
  """The feature MSE (the release's whole loss), gradients into the student map and the projector,
  BN statistics, and the prediction through the teacher's classifier, for each spatial alignment."""
  f_s, f_t, fc, z_s, z_t, y = _case(0, s_shape, t_shape)
  method = methods.get("simkd", recipes.base_config())
  with jax.enable_x64(True):
    s_out, t_out = (jnp.asarray(z_s), {"feats": [jnp.asarray(f_s)]}), (jnp.asarray(z_t), {"feats": [jnp.asarray(f_t)]})
    params, state = method.init(jax.random.key(0), s_out, t_out,
                                {"teacher_variables": {"params": {"classifier": {"0": fc}}}})
    params, state = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, state))

    def total(p, f):
      out = method.loss(p, state, (jnp.asarray(z_s), {"feats": [f]}), t_out, {"label": y}, PROGRESS)
      return out[0], out[1:]

    (value, (metrics, new_state)), (g_p, g_f) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
        params, jnp.asarray(f_s))
  proj = _torch_projector(params["transfer"], s_shape[-1], t_shape[-1])
  cls_t = torch.nn.Linear(t_shape[-1], fc["bias"].shape[0]).double()
  with torch.no_grad():
    cls_t.weight.copy_(torch.tensor(fc["kernel"].T))
    cls_t.bias.copy_(torch.tensor(fc["bias"]))
  fs = torch.tensor(parity.nchw(f_s), requires_grad=True)
  trans, target, pred = proj(fs, torch.tensor(parity.nchw(f_t)), cls_t)
  loss = torch.nn.functional.mse_loss(trans, target)
  loss.backward()
  np.testing.assert_allclose(float(value), loss.item(), rtol=1e-10)
  np.testing.assert_allclose(np.asarray(g_f), parity.nhwc(fs.grad.numpy()), rtol=1e-8, atol=1e-15)
  np.testing.assert_allclose(np.asarray(g_p["transfer"]["3"]["kernel"]),
                             proj.transfer[3].weight.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-8, atol=1e-15)
  np.testing.assert_allclose(np.asarray(new_state["batch_stats"]["7"]["var"]),
                             proj.transfer[7].running_var.numpy(), rtol=1e-10)
  correct = (pred.argmax(1).numpy() == y).mean() * 100
  np.testing.assert_allclose(float(metrics["top1_deployed"]), correct)
  assert set(g_p) == {"transfer"} and "teacher_classifier" in new_state


def test_the_deployed_student_predicts_as_the_release_does_at_test_time():
  """simkd(resnet8,...) = the torch student's last stage -> pooled to the teacher's size ->
  projector (eval) -> average pool -> the teacher's classifier, in eval mode."""
  name = simkd_model.name("resnet8", channels=12, hw=4, factor=2)
  model = models.get(name, num_classes=10)
  x = np.random.default_rng(1).standard_normal((3, 32, 32, 3))
  with jax.enable_x64(True):
    variables = model.init(jax.random.key(3), jnp.zeros((1, 32, 32, 3)), train=False)
    variables = parity.random_like(variables, 2, np.float64)
    variables["batch_stats"] = jax.tree.map(lambda a: np.abs(a) + 0.5, variables["batch_stats"])
    logits, _ = model.apply(variables, jnp.asarray(x), train=False)
  sd = convert.variables_to_state_dict(variables, name, 10)
  student = torch_models.MODELS["resnet8"](num_classes=10).double().eval()
  student.load_state_dict({k[len("student."):]: torch.tensor(v) for k, v in sd.items() if k.startswith("student.")})
  proj = ref.SimKDProjector(64, 12).double().eval()
  proj.load_state_dict({k: torch.tensor(v) for k, v in sd.items() if k.startswith("transfer.")})
  cls_t = torch.nn.Linear(12, 10).double()
  cls_t.load_state_dict({k[len("cls_t."):]: torch.tensor(v) for k, v in sd.items() if k.startswith("cls_t.")})
  with torch.no_grad():
    _, feats = student(torch.tensor(parity.nchw(x)))
    _, _, pred = proj(feats["feats"][-1], torch.zeros(3, 12, 4, 4, dtype=torch.float64), cls_t)
  np.testing.assert_allclose(np.asarray(logits), pred.numpy(), rtol=1e-9, atol=1e-12)


def test_the_export_to_pytorch_says_what_it_holds(tmp_path):
  name = simkd_model.name("resnet8", channels=16, hw=8, factor=2)
  variables = models.get(name, num_classes=10).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  path = str(tmp_path / "simkd.pth")
  holds = convert.to_torch(jax.device_get(variables), path, arch=name, num_classes=10)
  assert "'proj'" in holds and "'cls_t'" in holds
  saved = torch.load(path, weights_only=True)
  assert set(saved) == {"model", "proj", "cls_t"}
  torch_models.MODELS["resnet8"](num_classes=10).load_state_dict(saved["model"])  # the student network
  ref.SimKDProjector(64, 16).load_state_dict(saved["proj"])  # the release's module holding `transfer`
  assert set(saved["cls_t"]) == {"weight", "bias"} and tuple(saved["cls_t"]["weight"].shape) == (10, 16)


def test_the_method_names_its_deployed_network_and_fills_its_variables():
  method = methods.get("simkd", recipes.base_config())
  s_out = (jnp.zeros((2, 100)), {"feats": [jnp.zeros((2, 8, 8, 256))]})
  t_out = (jnp.zeros((2, 100)), {"feats": [jnp.zeros((2, 8, 8, 256))]})
  name = method.deployed.arch("resnet8x4", s_out, t_out)
  assert name == "simkd(resnet8x4,channels=256,hw=8,factor=2)" and simkd_model.parse(name) == ("resnet8x4", 256, 8, 2)
  assert models.exists(name) and not models.exists("simkd(resnet9,channels=256,hw=8,factor=2)")
  with pytest.raises(UserError, match="not a SimKD model name"):
    simkd_model.parse("simkd(resnet8x4)")


def test_config_and_refusals():
  module = recipes.load_config_module("configs/simkd_cifar.py")
  c = module.get_config("resnet32x4,vgg8,factor=4")
  assert (c.method, c.teacher.arch, c.model, c.simkd.factor, c.simkd.ce_weight, c.simkd.kd_weight) == (
      "simkd", "resnet32x4", "vgg8", 4, 0.0, 0.0)
  cfg = recipes.base_config()
  cfg.simkd.factor = 0
  with pytest.raises(UserError, match="must be >= 1"):
    methods.get("simkd", cfg)
  cfg.simkd.factor = 5
  f = (jnp.zeros((2, 10)), {"feats": [jnp.zeros((2, 4, 4, 8))]})
  with pytest.raises(UserError, match="does not divide"):
    methods.get("simkd", cfg).init(jax.random.key(0), f, f, {"teacher_variables": {}})
  assert os.path.basename(module.__file__) == "simkd_cifar.py"
