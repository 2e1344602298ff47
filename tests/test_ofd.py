"""OFD: PyTorch (mdistiller) parity, the teacher margins, refusals, numerical safety, its config.

Tolerances: tests/loss_parity.py.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kdjax import methods, models, recipes
from kdjax.errors import UserError
from kdjax.methods import ofd
from experiments.repro import tables
from tests import loss_parity as lp
from tests import parity
from tests.torch_reference import crd_ofd_kdsvd as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


OFD_PAIRS = {"same_family": ("resnet32x4", "resnet8x4"), "cross_family": ("ResNet50", "MobileNetV2"),
             "vgg": ("vgg13", "vgg8"), "wrn": ("wrn_40_2", "ShuffleV1")}


@functools.lru_cache(maxsize=None)
def _teacher_params(arch: str):
  """Random BN scale/bias (some negative, some large |beta|/|gamma|) in the teacher's param tree."""
  model = models.get(arch, num_classes=100)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  rng = np.random.default_rng(7)

  def fill(path, s):
    name = parity.path(path).rsplit("/", 1)[-1]
    if name == "scale":
      return (rng.standard_normal(s.shape) * 0.7).astype(np.float32)
    if name == "bias":
      return (rng.standard_normal(s.shape) * 1.5).astype(np.float32)
    return np.zeros(s.shape, np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _ofd_setup(pair, dtype, seed=0):
  teacher, student = OFD_PAIRS[pair]
  cfg = recipes.base_config()
  cfg.teacher.arch = teacher
  method = methods.get("ofd", cfg)
  s_out, t_out = parity.outputs(student, seed, dtype), parity.outputs(teacher, seed + 1, dtype)
  data_info = {"teacher_variables": _teacher_params(teacher)}
  params, state = jax.jit(functools.partial(method.init, data_info=data_info))(
      jax.random.key(0), s_out, t_out)
  rng = np.random.default_rng(seed + 2)
  params = jax.tree.map(lambda x: (0.1 * rng.standard_normal(x.shape)).astype(dtype), params)
  state = jax.tree.map(lambda x: np.asarray(x, dtype), state)
  return cfg, method, params, state, s_out, t_out


def _torch_ofd(cfg, params, state, s_out, t_out, labels, dtype):
  logits, s = lp.torch_student(s_out, dtype)
  g_s = s["preact_feats"][1:]
  g_t = [lp.tensor(parity.nchw(np.asarray(f, dtype))) for f in t_out[1]["preact_feats"][1:]]
  n = min(len(g_s), len(g_t))
  connectors, links = [], {}
  for i, f_t in enumerate(g_t[len(g_t) - n:]):
    f_s = g_s[len(g_s) - n + i]
    c = ref.Connector(f_s.shape[1], f_t.shape[1], cfg.ofd.kernel_size).to(f_s.dtype).train()
    p = params[f"connector{i}"]
    with torch.no_grad():
      c[0].weight.copy_(lp.tensor(np.asarray(p["conv"]["kernel"], dtype).transpose(3, 2, 0, 1)))
      c[1].weight.copy_(lp.tensor(np.asarray(p["bn"]["scale"], dtype)))
      c[1].bias.copy_(lp.tensor(np.asarray(p["bn"]["bias"], dtype)))
    connectors.append(c)
    links[i] = c
  margins = [lp.tensor(np.asarray(state["margins"][f"connector{i}"], dtype)) for i in range(n)]
  term = ref.ofd(g_s, g_t, connectors, margins)
  out = lp.torch_common("ofd", cfg, logits, s, term, labels)
  for i, c in links.items():
    out[f"d/d params: connector{i}/conv/kernel"] = c[0].weight.grad.numpy().transpose(2, 3, 1, 0)
    out[f"d/d params: connector{i}/bn/scale"] = c[1].weight.grad.numpy()
    out[f"d/d params: connector{i}/bn/bias"] = c[1].bias.grad.numpy()
    out[f"state: batch_stats/connector{i}/bn/mean"] = c[1].running_mean.numpy()
    out[f"state: batch_stats/connector{i}/bn/var"] = c[1].running_var.numpy()
  return out


def _ofd_state_keys(state):
  return tuple(parity.path(p) for p, _ in jax.tree_util.tree_leaves_with_path(state["batch_stats"]))


def _ofd_results(method, params, state, s_out, t_out):
  keep = tuple("batch_stats/" + k for k in _ofd_state_keys(state))
  return lp.jax_results("ofd", method, params, state, s_out, t_out,
                      {"label": lp.labels(), "index": np.arange(parity.BATCH), "rng": jax.random.key(0)}, keep)


@pytest.mark.parametrize("pair", list(OFD_PAIRS))
def test_ofd_matches_torch_float64(pair):
  with jax.enable_x64(True):
    cfg, method, params, state, s_out, t_out = _ofd_setup(pair, np.float64)
    ours = _ofd_results(method, params, state, s_out, t_out)
  assert ours["loss_ofd"] > 0
  lp.assert_equal64(ours, _torch_ofd(cfg, params, state, s_out, t_out, lp.labels(), np.float64))


def test_ofd_matches_torch_float32():
  cfg, method, params, state, s_out, t_out = _ofd_setup("same_family", np.float32, seed=3)
  ours = _ofd_results(method, params, state, s_out, t_out)
  to64 = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float64), tree)
  lp.assert_equal32(ours, _torch_ofd(cfg, params, state, s_out, t_out, lp.labels(), np.float32),
                  _torch_ofd(cfg, to64(params), to64(state), s_out, t_out, lp.labels(), np.float64))


@pytest.mark.parametrize("pair", list(OFD_PAIRS))
def test_ofd_margins_are_mdistillers_from_the_right_bns(pair):
  """Margins equal mdistiller's scipy computation on the BN before each teacher ReLU tap, in order."""
  teacher = OFD_PAIRS[pair][0]
  variables = _teacher_params(teacher)
  paths = ofd.bn_before_relu_paths(teacher, variables["params"])
  expected_paths = {
      "resnet32x4": [("layer1", "4", "bn2"), ("layer2", "4", "bn2"), ("layer3", "4", "bn2")],
      "ResNet50": [("layer1", "2", "bn3"), ("layer2", "3", "bn3"), ("layer3", "5", "bn3"),
                   ("layer4", "2", "bn3")],
      "vgg13": [("block1", "4"), ("block2", "4"), ("block3", "4"), ("block4", "4")],
      "wrn_40_2": [("block2", "layer", "0", "bn1"), ("block3", "layer", "0", "bn1"), ("bn1",)],
  }[teacher]
  assert paths == expected_paths
  ours = ofd.teacher_margins(teacher, variables)
  t_channels = [s[-1] for s in parity.shapes(teacher)[1][1:]]
  assert [m.shape[0] for m in ours] == t_channels
  for path, margin in zip(paths, ours):
    bn = variables["params"]
    for key in path:
      bn = bn[key]
    expected = ref.ofd_margin(bn["scale"], bn["bias"])
    assert np.any(expected == -3 * np.abs(bn["scale"]))  # both branches are exercised
    np.testing.assert_allclose(np.asarray(margin), expected, rtol=1e-5, atol=1e-6)


def test_ofd_margin_is_finite_for_zero_gamma():
  scale, bias = jnp.array([0.0, 0.0, 1.0]), jnp.array([-0.5, 0.5, 0.0])
  margin, grads = jax.value_and_grad(lambda s, b: jnp.sum(ofd.margin_from_bn(s, b)), argnums=(0, 1))(
      scale, bias)
  np.testing.assert_allclose(ofd.margin_from_bn(scale, bias)[:2], [-0.5, 0.0])
  assert np.isfinite(margin) and all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("teacher", ["ShuffleV2", "MobileNetV2"])
def test_ofd_refuses_unsupported_teachers(teacher):
  cfg = recipes.base_config()
  cfg.teacher.arch = teacher
  method = methods.get("ofd", cfg)
  s_out, t_out = parity.outputs("resnet8x4", 0), parity.outputs(teacher, 1)
  with pytest.raises(UserError, match="not for teacher"):
    method.init(jax.random.key(0), s_out, t_out, {"teacher_variables": _teacher_params(teacher)})


def test_ofd_refuses_missing_teacher_variables():
  cfg = recipes.base_config()
  cfg.teacher.arch = "resnet32x4"
  with pytest.raises(UserError, match="teacher_variables"):
    methods.get("ofd", cfg).init(jax.random.key(0), parity.outputs("resnet8x4", 0),
                                 parity.outputs("resnet32x4", 1), {"teacher_variables": None})


@pytest.mark.parametrize("case", ["zero_student", "zero_both"])
def test_ofd_finite_at_zero_features(case):
  _, method, params, state, s_out, t_out = _ofd_setup("same_family", np.float32, seed=5)
  s_out = (s_out[0], jax.tree.map(np.zeros_like, s_out[1]))
  if case == "zero_both":
    t_out = (t_out[0], jax.tree.map(np.zeros_like, t_out[1]))
  for key, value in _ofd_results(method, params, state, s_out, t_out).items():
    assert np.all(np.isfinite(value)), key


def test_config_carries_mdistillers_settings():
  ofd_cfg = recipes.load_config_module(os.path.join(ROOT, "configs", "ofd_cifar.py"))
  assert set(ofd_cfg.PAIRS) == set(tables.REPORTED["ofd_cifar"]) and len(ofd_cfg.PAIRS) == 11
  assert tables.UNCONFIRMED["ofd_cifar"] <= set(tables.REPORTED["ofd_cifar"])
  o = ofd_cfg.get_config("ResNet50,MobileNetV2")
  assert (o.ofd.ce_weight, o.ofd.feat_weight, o.ofd.kernel_size, o.ofd.teacher_bn_mode) == (1.0, 0.001, 1, "batch_stats")
  assert methods.get("ofd", o).teacher_bn_mode == "batch_stats"
  o.ofd.teacher_bn_mode = "eval"
  assert methods.get("ofd", o).teacher_bn_mode == "eval"
  o.ofd.teacher_bn_mode = "running"
  with pytest.raises(UserError, match="teacher BatchNorm mode 'running'"):
    methods.get("ofd", o)
  for teacher in {pair.split(",")[0] for pair in ofd_cfg.PAIRS}:  # every OFD teacher has a BN lookup
    assert ofd.bn_before_relu_paths(teacher, _teacher_params(teacher)["params"])
