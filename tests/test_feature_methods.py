"""FitNets, AT, NST, PKT, SP, RKD, VID, CC: PyTorch parity, numerical safety, real train steps.

Inputs are random features of exactly the shapes the kdjax models produce (NHWC here,
NCHW for PyTorch); the methods' own modules get identical weights on both sides.
"""
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kdjax import methods, models, recipes
from kdjax.methods import _common
from tests.torch_reference import feature_losses as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("fitnet", "at", "nst", "pkt", "sp", "rkd", "vid", "cc")
# Same family (1x1 'valid' hint regressor); ShuffleV2 (transposed-conv regressor, 3 vs 3 stages);
# MobileNetV2 (4 stages, the teacher's 4x4 last map pooled to the student's 2x2).
PAIRS = (("resnet32x4", "resnet8x4"), ("resnet32x4", "ShuffleV2"), ("vgg13", "MobileNetV2"))
RTOL = 1e-5


# ---------------------------------------------------------------------------- inputs


@functools.lru_cache(maxsize=None)
def _shapes(arch: str):
  """(feats shapes, preact shapes, pooled shape) of `arch` on a 32x32 batch of one, without compute."""
  model = models.get(arch, num_classes=100)
  x = jnp.zeros((1, 32, 32, 3), jnp.float32)
  out = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x, train=False), x,
                                           train=False))[1]
  return (tuple(f.shape[1:] for f in out["feats"]), tuple(f.shape[1:] for f in out["preact_feats"]),
          out["pooled"].shape[1:])


def _outputs(arch: str, batch: int, seed: int, classes: int = 100):
  """Random `(logits, features)` shaped like `arch`'s: non-negative post-ReLU maps and pooled vectors."""
  rng = np.random.default_rng(seed)
  feats, preacts, pooled = _shapes(arch)
  normal = lambda shape: rng.standard_normal((batch, *shape)).astype(np.float32)
  return (normal((classes,)),
          {"feats": tuple(np.maximum(normal(s), 0.0) for s in feats),
           "preact_feats": tuple(normal(s) for s in preacts),
           "pooled": np.abs(normal(pooled))})


def _perturb(tree, seed: int):
  """Every leaf moved by N(0, 0.1^2) so the copy into PyTorch is checked on non-default values."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
  return treedef.unflatten([x + 0.1 * jax.random.normal(k, x.shape, x.dtype)
                            for x, k in zip(leaves, keys)])


def _nchw(x):
  return np.transpose(x, (0, 3, 1, 2)) if x.ndim == 4 else x


def _nhwc(x):
  return np.transpose(x, (0, 2, 3, 1)) if x.ndim == 4 else x


def _torch_features(features, requires_grad: bool):
  """The features dict as NCHW torch tensors."""
  t = lambda x: torch.tensor(_nchw(np.asarray(x)), requires_grad=requires_grad)
  return {"feats": [t(f) for f in features["feats"]], "pooled": t(features["pooled"])}


def _progress():
  return methods.Progress(step=jnp.int32(0), epoch=jnp.int32(0))


def _batch(batch: int, seed: int = 5, classes: int = 100):
  labels = np.random.default_rng(seed).integers(0, classes, batch).astype(np.int32)
  return {"label": labels, "index": np.arange(batch, dtype=np.int32), "rng": jax.random.key(0)}


# ---------------------------------------------- the PyTorch side, with weights copied in

# Flax conv kernels are (kh, kw, in, out) and a transposed conv's (kh, kw, out, in): both map to
# torch's weight layout by the same permutation. Dense kernels are (in, out).
_CONV = (lambda k: k.transpose(3, 2, 0, 1), lambda w: w.transpose(2, 3, 1, 0))
_DENSE = (lambda k: k.T, lambda w: w.T)
_SAME = (lambda x: x, lambda x: x)


def _leaf(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _load(params, links):
  """Copies the Flax leaves at each path of `links` into the linked torch parameter."""
  with torch.no_grad():
    for path, (param, (to_torch, _)) in links.items():
      param.copy_(torch.tensor(to_torch(np.asarray(_leaf(params, path)))))
  return links


def _torch_fitnet(params, s, t, cfg):
  layer = cfg.fitnet.hint_layer
  f_s, f_t = s["feats"][layer], t["feats"][layer]
  reg = ref.ConvReg(tuple(f_s.shape[1:]), tuple(f_t.shape[1:])).to(f_s.dtype).train()
  links = _load(params, {("conv", "kernel"): (reg.conv.weight, _CONV),
                         ("conv", "bias"): (reg.conv.bias, _SAME),
                         ("bn", "scale"): (reg.bn.weight, _SAME),
                         ("bn", "bias"): (reg.bn.bias, _SAME)})
  return ref.fitnet(f_s, f_t, reg), links, reg.bn


def _torch_vid(params, s, t, cfg):
  g_s, g_t = s["feats"][1:], t["feats"][1:]
  stages, links = [], {}
  for k, (f_s, f_t) in enumerate(zip(g_s, g_t)):
    stage = ref.VIDStage(f_s.shape[1], f_t.shape[1], cfg.vid.init_pred_var, cfg.vid.eps).to(f_s.dtype)
    stages.append(stage)
    for i in range(3):
      links[(f"stage{k + 1}", f"conv{i}", "kernel")] = (stage.regressor[2 * i].weight, _CONV)
    links[(f"stage{k + 1}", "alpha")] = (stage.alpha, _SAME)
  _load(params, links)
  return ref.vid(g_s, g_t, stages), links, None


def _torch_cc(params, s, t, cfg):
  f_s, f_t = s["pooled"], t["pooled"]
  embed_s = torch.nn.Linear(f_s.shape[1], cfg.cc.embed_dim).to(f_s.dtype)
  embed_t = torch.nn.Linear(f_t.shape[1], cfg.cc.embed_dim).to(f_t.dtype)
  links = {}
  for name, lin in (("embed_s", embed_s), ("embed_t", embed_t)):
    links[(name, "kernel")] = (lin.weight, _DENSE)
    links[(name, "bias")] = (lin.bias, _SAME)
  _load(params, links)
  return ref.cc(f_s, f_t, embed_s, embed_t), links, None


# name -> fn(flax params, student feats, teacher feats, cfg) -> (term, {flax path: (torch param,
# layout maps)}, the BatchNorm whose running statistics the method state must match, or None).
_TORCH = {
    "fitnet": _torch_fitnet,
    "at": lambda p, s, t, cfg: (ref.at(s["feats"][1:], t["feats"][1:], cfg.at.p), {}, None),
    "nst": lambda p, s, t, cfg: (ref.nst(s["feats"][1:], t["feats"][1:]), {}, None),
    "pkt": lambda p, s, t, cfg: (ref.pkt(s["pooled"], t["pooled"], cfg.pkt.eps), {}, None),
    "sp": lambda p, s, t, cfg: (ref.sp(s["feats"][-1], t["feats"][-1]), {}, None),
    "rkd": lambda p, s, t, cfg: (ref.rkd(s["pooled"], t["pooled"], cfg.rkd.distance_weight,
                                         cfg.rkd.angle_weight, cfg.rkd.eps), {}, None),
    "vid": _torch_vid,
    "cc": _torch_cc,
}


# ------------------------------------------------------------------------- parity

# float32 (the training dtype) on the same-family pair: the two frameworks round differently,
# and terms such as PKT's KL between near-uniform distributions are ill-conditioned, so the
# loss is compared to RTOL relative and each gradient norm-wise (||a - b|| <= RTOL ||b||).
# float64 on the cross-family pairs: the same function on both sides, elementwise to 1e-9.
RTOL64 = 1e-9
CROSS_PAIR = {"fitnet": ("resnet32x4", "ShuffleV2"), "sp": ("resnet32x4", "ShuffleV2"),
              "pkt": ("resnet32x4", "ShuffleV2"), "rkd": ("resnet32x4", "ShuffleV2")}
PARITY_CASES = [(m, PAIRS[0], "float32") for m in METHODS] + [
    (m, CROSS_PAIR.get(m, PAIRS[2]), "float64") for m in METHODS]


def _close(actual, expected, what: str, rtol: float, scale: float | None = None):
  """Elementwise to `rtol`, with absolute slack rtol * scale (default: max |expected|)."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  if scale is None:
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


def _close_norm(actual, expected, what: str, rtol: float, scale: float | None = None):
  """||actual - expected|| <= rtol * max(||expected||, scale)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  bound = rtol * max(float(np.linalg.norm(expected)), scale or 0.0)
  assert np.linalg.norm(actual - expected) <= bound, (what, np.linalg.norm(actual - expected), bound)


def _value_and_grads(method, params, state, s_out, t_out, batch):
  """((loss, (metrics, new state)), grads w.r.t. (params, student logits, student features, teacher features))."""

  def total(params, s_logits, s_feats, t_feats):
    loss, metrics, new_state = method.loss(params, state, (s_logits, s_feats), (t_out[0], t_feats),
                                           batch, _progress())
    return loss, (metrics, new_state)

  return jax.value_and_grad(total, argnums=(0, 1, 2, 3), has_aux=True)(params, s_out[0], s_out[1],
                                                                      t_out[1])


# One compiled program per (method, shapes, dtype); the Method objects are cached so that tests
# with equal shapes (parity and the degenerate-input checks) share it.
_jit_value_and_grads = jax.jit(_value_and_grads, static_argnums=0)


@functools.lru_cache(maxsize=None)
def _method(name: str):
  return methods.get(name, recipes.base_config())


def _check_param_grads(grads, links, compare, rtol):
  """Each linked parameter's gradient equals PyTorch's, relative to the largest parameter gradient.

  The common scale matters for ConvReg's conv bias: a train-mode BN follows it, so its true
  gradient is 0 and both frameworks return rounding noise of the size RTOL * max gradient.
  """
  expected = {path: to_flax(param.grad.numpy()) for path, (param, (_, to_flax)) in links.items()}
  scale = max((float(np.max(np.abs(g))) for g in expected.values()), default=0.0)
  for path, g in expected.items():
    compare(_leaf(grads, path), g, f"d/d {'/'.join(path)}", rtol, scale)


@pytest.mark.parametrize("name,pair,dtype", PARITY_CASES,
                         ids=[f"{m}-{','.join(p)}-{d}" for m, p, d in PARITY_CASES])
def test_matches_torch(name, pair, dtype):
  """Loss, gradients w.r.t. the student's outputs and the method's params, BN statistics: = PyTorch."""
  teacher, student = pair
  cfg = recipes.base_config()
  method = _method(name)
  cast = lambda tree: jax.tree.map(lambda x: np.asarray(x, dtype), tree)
  s_out, t_out = cast(_outputs(student, 8, seed=0)), cast(_outputs(teacher, 8, seed=1))
  batch = _batch(8)
  params, state = method.init(jax.random.key(2), s_out, t_out, {})
  params, state = cast(_perturb(params, 3)), cast(state)
  with jax.enable_x64(dtype == "float64"):
    (value, (metrics, new_state)), (g_params, g_logits, g_feats, g_teacher) = _jit_value_and_grads(
        method, params, state, s_out, t_out, batch)
  assert np.asarray(value).dtype == dtype

  s_logits = torch.tensor(s_out[0], requires_grad=True)
  s_feats, t_feats = _torch_features(s_out[1], True), _torch_features(t_out[1], False)
  term, links, bn = _TORCH[name](params, s_feats, t_feats, cfg)
  node = cfg[name]
  ce = torch.nn.functional.cross_entropy(s_logits, torch.tensor(batch["label"], dtype=torch.long))
  total = node.ce_weight * ce + node.feat_weight * term
  total.backward()

  rtol, compare = (RTOL64, _close) if dtype == "float64" else (RTOL, _close_norm)
  _close(value, total.item(), "loss", rtol)
  _close(metrics[f"loss_{name}"], term.item(), f"loss_{name}", rtol)
  compare(g_logits, s_logits.grad.numpy(), "d/d logits", rtol)
  for i, (g, f) in enumerate(zip(g_feats["feats"], s_feats["feats"])):
    compare(g, np.zeros_like(g) if f.grad is None else _nhwc(f.grad.numpy()), f"d/d feats[{i}]", rtol)
  pooled = s_feats["pooled"].grad
  compare(g_feats["pooled"], np.zeros_like(g_feats["pooled"]) if pooled is None else pooled.numpy(),
          "d/d pooled", rtol)
  assert all(np.all(np.asarray(g) == 0) for g in g_feats["preact_feats"])
  # Every trainable leaf is linked to a torch parameter, and its gradient matches.
  assert len(links) == len(jax.tree.leaves(params))
  _check_param_grads(g_params, links, compare, rtol)
  if bn is not None:  # FitNets: the regressor's BN ran in train mode and updated its statistics
    compare(new_state["batch_stats"]["bn"]["mean"], bn.running_mean.numpy(), "BN running mean", rtol)
    compare(new_state["batch_stats"]["bn"]["var"], bn.running_var.numpy(), "BN running var", rtol)
  # The teacher is a constant.
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_teacher))


@pytest.mark.parametrize("shapes", [((16, 16, 8), (8, 8, 12)), ((8, 8, 8), (16, 16, 12)),
                                    ((10, 10, 8), (8, 8, 12))], ids=["stride2", "transposed", "valid3x3"])
def test_fitnet_regressor_branches_match_torch(shapes):
  """All three ConvReg convolutions (the published pairs use only 'transposed' and 1x1 'valid')."""
  from kdjax.methods import fitnet  # pylint: disable=import-outside-toplevel
  (s_h, s_w, s_c), (t_h, t_w, t_c) = shapes
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4, s_h, s_w, s_c)).astype(np.float32)
  target = np.abs(rng.standard_normal((4, t_h, t_w, t_c))).astype(np.float32)
  module = fitnet.ConvReg((s_h, s_w, s_c), (t_h, t_w, t_c))
  variables = module.init(jax.random.key(0), x, train=False)
  params = _perturb(variables["params"], 1)
  value, grads = jax.value_and_grad(
      lambda p, x: fitnet.hint_loss(p, variables["batch_stats"], x, target)[0], argnums=(0, 1))(params, x)

  reg = ref.ConvReg((s_c, s_h, s_w), (t_c, t_h, t_w)).train()
  links = _load(params, {("conv", "kernel"): (reg.conv.weight, _CONV),
                         ("conv", "bias"): (reg.conv.bias, _SAME),
                         ("bn", "scale"): (reg.bn.weight, _SAME), ("bn", "bias"): (reg.bn.bias, _SAME)})
  xt = torch.tensor(_nchw(x), requires_grad=True)
  expected = ref.fitnet(xt, torch.tensor(_nchw(target)), reg)
  expected.backward()
  _close(value, expected.item(), "hint loss", RTOL)
  _close_norm(grads[1], _nhwc(xt.grad.numpy()), "d/d student map", RTOL)
  _check_param_grads(grads[0], links, _close_norm, RTOL)


def test_adaptive_pool_matches_torch_on_uneven_windows():
  x = np.random.default_rng(0).standard_normal((2, 7, 5, 3)).astype(np.float32)
  expected = torch.nn.functional.adaptive_avg_pool2d(torch.tensor(_nchw(x)), (3, 2)).numpy()
  _close(_common.adaptive_avg_pool(jnp.asarray(x), (3, 2)), _nhwc(expected), "pooled", RTOL)


# ------------------------------------------------------------------ numerical safety


def _degenerate(out, case: str):
  """Outputs with all-zero features, or with sample 1 a copy of sample 0."""
  logits, feats = out
  if case == "zero":
    return logits, jax.tree.map(np.zeros_like, feats)
  copy = lambda a: np.concatenate([a[:1], a[:1], a[2:]])
  return copy(logits), jax.tree.map(copy, feats)


@pytest.mark.parametrize("case", ["zero_student", "zero_both", "duplicate_student_rows"])
@pytest.mark.parametrize("name", METHODS)
def test_finite_value_and_gradient_at_degenerate_features(name, case):
  """Zero features (dead ReLUs) and identical samples (RKD's i = j) keep loss and gradients finite."""
  method = _method(name)
  s_out, t_out = _outputs(PAIRS[0][1], 8, seed=0), _outputs(PAIRS[0][0], 8, seed=1)
  s_out = _degenerate(s_out, "zero" if case.startswith("zero") else "duplicate")
  if case == "zero_both":
    t_out = _degenerate(t_out, "zero")
  params, state = method.init(jax.random.key(0), s_out, t_out, {})
  (value, (metrics, _)), grads = _jit_value_and_grads(method, params, state, s_out, t_out, _batch(8))
  assert np.isfinite(value) and all(np.isfinite(v) for v in metrics.values())
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads[:3]))
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads[3]))


# ------------------------------------------------------------- real train steps

# The compiled step is the one training runs; the XLA flags only make CPU compilation cheaper
# (the smoke checks finiteness and updates, not speed).
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
SMOKE_RUNS = tuple((m, "resnet8x4", "resnet8") for m in METHODS) + (
    ("fitnet", "resnet8x4", "ShuffleV1"),  # the transposed-conv regressor in a real step
    ("vid", "resnet8x4", "MobileNetV2"),  # pooled teacher maps, 3 stage pairs out of 3 vs 4
)

_SMOKE_SCRIPT = r"""
import json, sys
import jax, numpy as np
from kdjax import data, models, recipes, train
dataset = data.load("digits")
images, labels = jax.numpy.asarray(dataset.train_images), jax.numpy.asarray(dataset.train_labels)
mesh = train.make_mesh(jax.devices()[:1])
teachers, out = {}, {}
changed = lambda a, b: [bool(np.any(x != y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
for method, teacher_arch, student in json.loads(sys.argv[1]):
  config = recipes.base_config()
  config.method, config.model, config.teacher.arch, config.batch_size = method, student, teacher_arch, 16
  if teacher_arch not in teachers:
    module = models.get(teacher_arch, num_classes=10)
    teachers[teacher_arch] = module, jax.jit(module.init)(jax.random.key(1), np.zeros((1, 32, 32, 3), np.float32))
  teacher, tvars = teachers[teacher_arch]
  run = train.build(config, dataset, mesh, teacher, tvars)
  before = jax.device_get((run.state.params["method"], run.state.method_state))
  state, losses, perm = run.state, [], run.permute(jax.random.key(0))
  for _ in range(2):
    state, metrics = run.train_step(state, tvars, images, labels, perm)
    losses.append(float(metrics["loss"]))
  after = jax.device_get((state.params["method"], state.method_state))
  out["/".join((method, teacher_arch, student))] = {
      "losses": losses, "term": float(metrics["loss_" + method]), "nonfinite_step": int(state.nonfinite_step),
      "params_changed": changed(before[0], after[0]), "state_changed": changed(before[1], after[1])}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def smoke_results():
  """Runs every SMOKE_RUNS entry in one subprocess (one import, one dataset load)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT,
             XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip())
  result = subprocess.run([sys.executable, "-c", _SMOKE_SCRIPT, json.dumps(SMOKE_RUNS)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("run", SMOKE_RUNS, ids="/".join)
def test_two_real_train_steps(smoke_results, run):
  """Two steps of the real trainer: finite losses, and the method's params (and BN state) updated."""
  r = smoke_results["/".join(run)]
  assert np.all(np.isfinite(r["losses"])) and np.isfinite(r["term"]) and r["nonfinite_step"] == -1
  has_params = run[0] in ("fitnet", "vid", "cc")
  assert bool(r["params_changed"]) == has_params
  assert all(r["params_changed"])
  assert bool(r["state_changed"]) == (run[0] == "fitnet") and all(r["state_changed"])
