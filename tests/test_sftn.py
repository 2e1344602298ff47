"""SFTN: the models' stage API, the phase-1 loss and branches against PyTorch, both phases end to end.

* `from_stage(feats[s], s)` of every family equals the full forward's logits and later features,
  creates exactly the full model's parameters of the stages it runs (same names and shapes), and
  for the CIFAR ResNet equals a PyTorch run of the remaining stages on the same weights.
* The SFTN loss, alone and with its branches (transform + ResNet stages), equals the PyTorch
  reference (tests/torch_reference/sftn.py) in float64: value, the gradient into the teacher's
  logits and stage features, every branch parameter's gradient and the branch BN statistics.
* `configs/sftn_cifar.py` through the mocked CLI trains the SFTN teacher, then distills from it,
  and a second run reuses that teacher.
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
from flax.traverse_util import flatten_dict

from kdjax import checkpoint, methods, models, recipes, train
from kdjax.convert import mapping
from kdjax.errors import UserError
from kdjax.methods import sftn
from tests import parity
from tests.torch_reference import models as torch_models
from tests.torch_reference import sftn as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL = 1e-5  # float64 on both sides: they agree far below this

# One model per family (small widths where the family has them).
FAMILIES = ("resnet8", "wrn_16_1", "vgg8", "ShuffleV1", "ShuffleV2", "MobileNetV2", "ResNet50")


# ---------------------------------------------------------------------------- stage API


@pytest.mark.parametrize("arch", FAMILIES)
def test_from_stage_equals_full_forward(arch):
  """From every stage s, `from_stage(feats[s], s)` reproduces the full forward's logits and later taps."""
  model = models.get(arch, num_classes=10)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  logits, feats = model.apply(variables, x, train=False)
  n = len(feats["feats"]) - 1
  assert model.num_stages == n
  full_params = flatten_dict(variables["params"])
  sizes = []
  for s in range(n + 1):
    h = feats["feats"][s]
    out, f = model.apply(variables, h, s, False, method=type(model).from_stage)
    np.testing.assert_allclose(out, logits, rtol=1e-5, atol=1e-5)
    assert len(f["feats"]) == n + 1 - s
    for key in ("feats", "preact_feats"):
      for a, b in zip(f[key][1:], feats[key][s + 1:]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f["pooled"], feats["pooled"], rtol=1e-5, atol=1e-5)
    # Initialising from stage s creates a subset of the full model's parameters, same names/shapes.
    part = flatten_dict(jax.eval_shape(lambda h: model.init(
        jax.random.key(0), h, s, False, method=type(model).from_stage), h)["params"])
    assert part and all(k in full_params and full_params[k].shape == v.shape for k, v in part.items())
    sizes.append(len(part))
  # Never the stem, and fewer parameters from each later stage.
  assert len(full_params) > sizes[0] and all(a > b for a, b in zip(sizes, sizes[1:]))
  with pytest.raises(ValueError, match="start_stage"):
    model.apply(variables, feats["feats"][0], n + 1, False, method=type(model).from_stage)


def _torch_resnet(arch: str, seed: int) -> torch.nn.Module:
  """The reference CIFAR ResNet in float64 with random weights and BN statistics."""
  torch.manual_seed(seed)
  net = torch_models.MODELS[arch](num_classes=10).double()
  with torch.no_grad():
    for name, t in net.state_dict().items():
      if t.dtype == torch.float64:
        t.copy_(torch.rand_like(t) + 0.5 if name.endswith("running_var") else torch.randn_like(t) * 0.3)
  return net


def _to_flax(sd) -> dict:
  """A torch state_dict as Flax {'params', 'batch_stats'} of float64 arrays (any subset of a model)."""
  flat = {}
  for key, t in sd.items():
    *module, leaf = key.split(".")
    if leaf == "num_batches_tracked":
      continue
    path = tuple(module)
    if leaf in ("running_mean", "running_var"):
      target = ("batch_stats", path, {"running_mean": "mean", "running_var": "var"}[leaf])
    elif leaf == "weight":
      target = ("params", path, "kernel" if t.dim() > 1 else "scale")
    else:
      target = ("params", path, leaf)
    flat[target] = mapping.to_flax_array(target, t.detach().numpy().copy())  # torch updates in place
  return mapping.unflatten_variables(flat)


@pytest.mark.parametrize("train", [False, True])
def test_from_stage_matches_torch_resnet(train):
  """kdjax resnet8 from stage s on imported weights = PyTorch's remaining stages (eval and train BN)."""
  net = _torch_resnet("resnet8", 0)
  net.train(train)
  variables = _to_flax(net.state_dict())
  model = models.get("resnet8", num_classes=10)
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    for s, shape in enumerate(((16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8))):
      h = np.maximum(rng.standard_normal((3, *shape)), 0.0)
      expected = ref.resnet_from_stage(net, torch.from_numpy(h), s).detach().numpy()
      kwargs = {"mutable": ["batch_stats"]} if train else {}
      result = model.apply(variables, jnp.asarray(h.transpose(0, 2, 3, 1)), s, train,
                           method=type(model).from_stage, **kwargs)
      out = (result[0] if train else result)[0]
      np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------- the loss


def _grads64(fn, *args):
  """(value, gradients) of `fn` at NumPy float64 `args`, computed in float64."""
  with jax.enable_x64(True):
    value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(args))))(*args)
  return float(value), grads


@pytest.mark.parametrize("direction", sftn.KL_DIRECTIONS)
@pytest.mark.parametrize("reduction", sftn.REDUCTIONS)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_loss_matches_torch(direction, reduction, temperature):
  """L_SFTN value and gradients (teacher and every branch logit) equal PyTorch's, float64."""
  rng = np.random.default_rng(3)
  zt, zr = rng.standard_normal((6, 10)) * 3, [rng.standard_normal((6, 10)) * 3 for _ in range(3)]
  labels = rng.integers(0, 10, 6)
  kw = dict(teacher_ce_weight=0.7, branch_ce_weight=1.3, branch_kl_weight=3.0, temperature=temperature,
            kl_direction=direction, branch_reduction=reduction)
  value, (g_t, g_r) = _grads64(
      lambda t, r: sftn.sftn_loss(t, r, jnp.asarray(labels), **kw)[0], zt, zr)
  tt = torch.tensor(zt, requires_grad=True)
  tr = [torch.tensor(z, requires_grad=True) for z in zr]
  expected = ref.sftn_loss(tt, tr, torch.from_numpy(labels), **kw)
  expected.backward()
  np.testing.assert_allclose(value, expected.item(), rtol=RTOL)
  # The KL term reaches the teacher: its gradient is not the CE gradient alone.
  np.testing.assert_allclose(g_t, tt.grad.numpy(), rtol=RTOL, atol=1e-12)
  for g, t in zip(g_r, tr):
    np.testing.assert_allclose(g, t.grad.numpy(), rtol=RTOL, atol=1e-12)
  ce_only = torch.autograd.grad(0.7 * torch.nn.functional.cross_entropy(tt, torch.from_numpy(labels)), tt)[0]
  assert np.abs(tt.grad.numpy() - ce_only.numpy()).max() > 1e-3


def test_kl_directions_differ_and_vanish_at_equal_logits():
  """The two readings give different values on different logits and 0 on equal ones."""
  rng = np.random.default_rng(0)
  a, b = jnp.asarray(rng.standard_normal((4, 10)) * 3), jnp.asarray(rng.standard_normal((4, 10)) * 3)
  kd, rev = sftn.branch_kl(a, b, 1.0, "kd"), sftn.branch_kl(a, b, 1.0, "reverse")
  assert abs(float(kd) - float(rev)) > 1e-3
  assert abs(float(sftn.branch_kl(a, a, 2.0, "kd"))) < 1e-6


@pytest.mark.parametrize("in_size,out_size,downsample,kernel,relu", [
    (16, 8, "avg_pool", 1, True), (16, 8, "stride", 1, True), (8, 8, "avg_pool", 3, False),
    (4, 8, "avg_pool", 1, True), (12, 8, "avg_pool", 1, True)])
def test_transform_matches_torch(in_size, out_size, downsample, kernel, relu):
  """T_i (resample, conv, BN in train mode, ReLU) and its BN statistics equal PyTorch's, float64."""
  torch.manual_seed(0)
  tm = ref.Transform(6, 5, in_size, out_size, kernel, relu, downsample).double().train()
  with torch.no_grad():
    for p in tm.parameters():
      p.copy_(torch.randn_like(p))
  variables = _to_flax(tm.state_dict())
  x = np.random.default_rng(1).standard_normal((3, 6, in_size, in_size))
  tx = torch.tensor(x, requires_grad=True)
  y = tm(tx)
  y.pow(2).sum().backward()
  module = sftn.Transform(5, (out_size, out_size), kernel, relu, downsample)
  with jax.enable_x64(True):
    def f(xj):
      out, mutated = module.apply(variables, xj, train=True, mutable=["batch_stats"])
      return jnp.sum(out**2), (out, mutated)
    (_, (out, mutated)), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(out, y.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(g, tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(mutated["batch_stats"]["1"]["var"], tm[1].running_var.numpy(), rtol=1e-9)


def _subset(tree, like):
  """`tree` restricted to the keys of `like` (nested dicts)."""
  if not isinstance(like, dict):
    return tree
  return {k: _subset(tree[k], v) for k, v in like.items()}


def _method(student="resnet8", teacher="resnet32x4", **overrides):
  config = recipes.base_config()
  config.method, config.model = "sftn", teacher
  config.sftn.student = student
  for k, v in overrides.items():
    config.sftn[k] = v
  return methods.get("sftn", config)


@pytest.mark.parametrize("direction,reduction", [("kd", "sum"), ("reverse", "mean")])
def test_method_with_branches_matches_torch(direction, reduction):
  """Full phase-1 loss with two resnet8 branches on resnet32x4-shaped teacher outputs, vs PyTorch.

  Checks the value, the gradients into the teacher's logits and its stage-1/2 features (through
  the transforms and the student stages), every branch parameter's gradient, and the branches'
  updated BN statistics.
  """
  method = _method(kl_direction=direction, branch_reduction=reduction)
  rng = np.random.default_rng(5)
  b = 4
  shapes = ((32, 32, 32), (32, 32, 64), (16, 16, 128), (8, 8, 256))  # resnet32x4's f0..f3 (NHWC)
  feats = tuple(np.maximum(rng.standard_normal((b, *s)), 0.0) for s in shapes)
  logits = rng.standard_normal((b, 10)) * 2
  labels = rng.integers(0, 10, b)
  params, state = method.init(jax.random.key(0), (jnp.zeros((b, 10)), {"feats": tuple(
      jnp.zeros((b, *s)) for s in shapes)}), None, {})
  assert sorted(params) == ["branch1", "branch2"]
  assert sorted(params["branch1"]["student"]) == ["fc", "layer2", "layer3"]
  assert sorted(params["branch2"]["student"]) == ["fc", "layer3"]
  # Random branch weights in PyTorch, float64, copied into the JAX tree.
  torch.manual_seed(1)
  branches = []
  for stage, (cin, cout) in ((1, (64, 16)), (2, (128, 32))):
    student = _torch_resnet("resnet8", 10 + stage).train()
    transform = ref.Transform(cin, cout, shapes[stage][0], shapes[stage][0]).double().train()
    with torch.no_grad():
      for p in transform.parameters():
        p.copy_(torch.randn_like(p) * 0.3)
    branches.append(ref.ResNetBranch(transform, student, stage))
  # Only the stages a branch runs exist in kdjax's tree (each PyTorch student is whole).
  variables = _subset({"params": {f"branch{s}": _to_flax(br.state_dict())["params"] for s, br in zip((1, 2), branches)},
                       "batch_stats": {f"branch{s}": _to_flax(br.state_dict())["batch_stats"]
                                       for s, br in zip((1, 2), branches)}},
                      {"params": params, "batch_stats": state["batch_stats"]})
  assert jax.tree.map(np.shape, variables) == jax.tree.map(np.shape, {"params": params,
                                                                      "batch_stats": state["batch_stats"]})
  batch = {"label": jnp.asarray(labels), "index": jnp.arange(b), "rng": jax.random.key(0)}

  with jax.enable_x64(True):
    def f(p, z, fs):
      loss, metrics, new_state = method.loss(p, {"batch_stats": variables["batch_stats"]},
                                             (z, {"feats": fs}), None, batch, None)
      return loss, new_state
    (value, new_state), (g_p, g_z, g_f) = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(
        variables["params"], jnp.asarray(logits), tuple(jnp.asarray(x) for x in feats))

  tz = torch.tensor(logits, requires_grad=True)
  tf = [torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True) for x in feats]
  expected = ref.sftn_loss(tz, [br(tf[s]) for s, br in zip((1, 2), branches)], torch.from_numpy(labels),
                           kl_direction=direction, branch_reduction=reduction)
  expected.backward()
  np.testing.assert_allclose(float(value), expected.item(), rtol=RTOL)
  np.testing.assert_allclose(g_z, tz.grad.numpy(), rtol=RTOL, atol=1e-10)
  for s in (1, 2):  # the teacher's stage features get the branches' gradient
    np.testing.assert_allclose(g_f[s], tf[s].grad.numpy().transpose(0, 2, 3, 1), rtol=RTOL, atol=1e-10)
    assert np.abs(g_f[s]).max() > 1e-6
  assert float(np.abs(g_f[0]).max()) == 0.0 and float(np.abs(g_f[3]).max()) == 0.0
  torch_grads = {}
  for s, br in zip((1, 2), branches):
    for name, p in br.named_parameters():
      if p.grad is not None:
        torch_grads[f"branch{s}.{name}"] = p.grad
  got = {}
  for target, g in mapping.flatten_variables({"params": g_p}).items():
    got[mapping.torch_key(target)] = mapping.to_torch_array(target, np.asarray(g))
  assert sorted(got) == sorted(torch_grads)
  for key, g in got.items():
    np.testing.assert_allclose(g, torch_grads[key].numpy(), rtol=RTOL, atol=1e-10, err_msg=key)
  for target, v in mapping.flatten_variables({"batch_stats": new_state["batch_stats"]}).items():
    *path, leaf = mapping.torch_key(target).split(".")
    module = dict(zip((1, 2), branches))[int(path[0][len("branch"):])].get_submodule(".".join(path[1:]))
    np.testing.assert_allclose(v, getattr(module, leaf).numpy(), rtol=1e-9, err_msg=".".join(path))


def test_stage_mismatch_and_bad_config_are_refused():
  """A teacher/student pair of different stage counts, an empty student and bad fields say why."""
  out = (jnp.zeros((2, 10)), {"feats": tuple(jnp.zeros((2, 32 // 2**max(i - 1, 0), 32 // 2**max(i - 1, 0), 8))
                                             for i in range(4))})
  with pytest.raises(UserError, match="same number of stages"):
    _method(student="vgg8", teacher="resnet8").init(jax.random.key(0), out, None, {})
  with pytest.raises(UserError, match="config.sftn.student"):
    _method(student="")
  with pytest.raises(UserError, match="kl_direction"):
    _method(kl_direction="forward")
  with pytest.raises(UserError, match="branch_reduction"):
    _method(branch_reduction="max")


def test_cross_family_branches_trace():
  """resnet32x4 -> ShuffleV2 maps 32x32x64 / 16x16x128 to 16x16x116 / 8x8x232; whole methods trace."""
  plan = sftn.make_plan("resnet32x4", "ShuffleV2", [jax.ShapeDtypeStruct((1, *s), jnp.float32) for s in (
      (32, 32, 32), (32, 32, 64), (16, 16, 128), (8, 8, 256))], 100)
  assert plan.stages == (1, 2)
  assert plan.out_channels == (116, 232) and plan.out_sizes == ((16, 16), (8, 8))
  # The whole method traces (shapes only) for that pair and for a VGG/ResNet50 one (4 stages).
  for teacher, student, shapes in (
      ("resnet32x4", "ShuffleV2", ((32, 32, 32), (32, 32, 64), (16, 16, 128), (8, 8, 256))),
      ("ResNet50", "vgg8", ((32, 32, 64), (32, 32, 256), (16, 16, 512), (8, 8, 1024), (4, 4, 2048)))):
    method = _method(student=student, teacher=teacher)
    out = (jnp.zeros((2, 100)), {"feats": tuple(jnp.zeros((2, *s)) for s in shapes)})
    params, state = jax.eval_shape(lambda o: method.init(jax.random.key(0), o, None, {}), out)
    assert sorted(params) == [f"branch{i}" for i in range(1, len(shapes) - 1)]
    batch = {"label": jnp.zeros((2,), jnp.int32), "index": jnp.arange(2), "rng": jax.random.key(0)}
    loss, metrics, _ = jax.eval_shape(lambda p, st, o: method.loss(p, st, o, None, batch, None),
                                      params, state, out)
    assert loss.shape == () and f"branch{len(shapes) - 2}_kl" in metrics


# ---------------------------------------------------------------------------- config


def test_config_chains_phases():
  """The config is phase 2 (kd by default, dkd's beta when asked) with an SFTN teacher recipe."""
  sys.path.insert(0, ROOT)
  from configs import sftn_cifar  # pylint: disable=import-outside-toplevel
  c = sftn_cifar.get_config("resnet32x4,ShuffleV2")
  assert (c.method, c.model, c.teacher.arch, c.teacher.recipe) == ("kd", "ShuffleV2", "resnet32x4", "sftn")
  assert c.sftn.student == "ShuffleV2" and c.optim.lr == 0.01 and c.teacher.train_lr == 0.05
  assert c.teacher.auto_workdir == "runs/teachers/{dataset}_{arch}_sftn_ShuffleV2"
  t = recipes.teacher_config(c)
  assert (t.method, t.model, t.sftn.student, t.epochs) == ("sftn", "resnet32x4", "ShuffleV2", 240)
  d = sftn_cifar.get_config("resnet32x4,resnet8x4,dkd")
  assert d.method == "dkd" and d.dkd.beta == 8.0 and d.teacher.recipe == "sftn"
  with pytest.raises(UserError, match="unknown teacher,student pair"):
    sftn_cifar.get_config("resnet32x4,MobileNetV2")
  with pytest.raises(UserError, match="does not distill"):
    train.check_config(sftn_cifar.get_config("resnet32x4,resnet8x4,vanilla"), 1)


# ---------------------------------------------------------------------------- end to end

ENV = parity.cli_env()


def _cli(workdir, teacher_dir):
  return [sys.executable, os.path.join(ROOT, "tests", "mocked_main.py"),
          "--config=configs/sftn_cifar.py:resnet32x4,resnet8x4", "--config.model=resnet8",
          "--config.teacher.arch=resnet8", f"--config.teacher.auto_workdir={teacher_dir}",
          "--config.teacher.train_epochs=1", "--config.epochs=1", "--config.batch_size=32",
          "--config.eval_batch_size=64", "--config.progress_bar=False", f"--workdir={workdir}"]


@pytest.mark.long
def test_end_to_end_both_phases_and_reuse(tmp_path):
  """Phase 1 (sftn, resnet8 branches) then phase 2 (kd) through the CLI; a second run reuses phase 1."""
  teacher_dir = str(tmp_path / "teacher_sftn")
  first = subprocess.run(_cli(str(tmp_path / "a"), teacher_dir), cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=900)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "training resnet8 on cifar100" in first.stdout
  phase1 = json.load(open(os.path.join(teacher_dir, "results.json")))
  assert (phase1["method"], phase1["student"], phase1["config"]["sftn"]["student"]) == ("sftn", "resnet8", "resnet8")
  record = json.loads(open(os.path.join(teacher_dir, "metrics.jsonl")).readline())
  assert np.isfinite(record["train_loss_branch_kl"]) and np.isfinite(record["train_loss_branch_ce"])
  # The exported teacher is the plain network: no branch parameters.
  variables, meta = checkpoint.load_model(os.path.join(teacher_dir, "model"))
  assert meta["arch"] == "resnet8" and sorted(variables["params"]) == ["bn1", "conv1", "fc", "layer1",
                                                                       "layer2", "layer3"]
  phase2 = json.load(open(os.path.join(tmp_path, "a", "results.json")))
  assert (phase2["method"], phase2["teacher"], phase2["student"]) == ("kd", "resnet8", "resnet8")
  assert phase2["config"]["teacher"]["recipe"] == "sftn"

  stamp = os.path.getmtime(os.path.join(teacher_dir, "results.json"))
  second = subprocess.run(_cli(str(tmp_path / "b"), teacher_dir), cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=900)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "training resnet8" not in second.stdout
  assert os.path.getmtime(os.path.join(teacher_dir, "results.json")) == stamp
  assert os.path.exists(os.path.join(tmp_path, "b", "results.json"))
