"""FitNets, AT, NST, PKT, SP, RKD, VID, CC: PyTorch parity, numerical safety, real train steps.

Inputs are random features of exactly the shapes the kdjax models produce (NHWC here,
NCHW for PyTorch); the methods' own modules get identical weights on both sides.

Parity runs twice per method. float64 on a cross-family pair: both sides compute the same
function, so everything agrees elementwise to 1e-9. float32 (the training dtype) on
resnet32x4 -> resnet8x4: loss and gradients agree with PyTorch's float32 to 1e-5 relative
(gradients norm-wise), except where PyTorch's own float32 result is further than that from
the float64 value (PKT's KL between near-uniform batch distributions is ill-conditioned);
there kdjax's float32 error must be of the same order as PyTorch's (at most 4x).
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

from kdjax import methods, ops, recipes
from kdjax.methods import fitnet
from tests import parity
from tests.torch_reference import feature_baselines as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("fitnet", "at", "nst", "pkt", "sp", "rkd", "vid", "cc")
SAME_FAMILY = ("resnet32x4", "resnet8x4")  # FitNets: a 1x1 'valid' regressor
# ShuffleV2: FitNets' transposed-conv regressor. MobileNetV2: 4 stage pairs, the teacher's
# 4x4 last map pooled to the student's 2x2.
CROSS_FAMILY = {m: ("resnet32x4", "ShuffleV2") for m in ("fitnet", "pkt", "sp", "rkd")}
CROSS_FAMILY.update({m: ("vgg13", "MobileNetV2") for m in ("at", "nst", "vid", "cc")})


# ---------------------------------------------------------------------------- inputs


@functools.lru_cache(maxsize=None)
def _method(name: str) -> methods.Method:
  """One Method object per name, so jitted functions of it are compiled once per shape."""
  return methods.get(name, recipes.base_config())


def _init(name: str, s_out, t_out, dtype):
  """Random params of `init`'s shapes (non-default values test the copy into PyTorch); BN state 0/1.

  Only `init`'s shapes are used (eval_shape): compiling its random initialisers costs more than
  the rest of a test. The real `init` runs in the train-step tests.
  """
  params, state = jax.eval_shape(_method(name).init, jax.random.key(0), s_out, t_out, {})
  state = jax.tree_util.tree_map_with_path(
      lambda p, s: np.full(s.shape, 1.0 if parity.path(p).endswith("var") else 0.0, dtype), state)
  return parity.random_like(params, 3, dtype), state


# ------------------------------------------------------------------------ the JAX side


def _value_and_grads(method, params, state, s_out, t_out, batch):
  """((loss, (metrics, state)), d/d (params, student logits, student feats, teacher feats))."""

  def total(params, s_logits, s_feats, t_feats):
    loss, metrics, new_state = method.loss(params, state, (s_logits, s_feats), (t_out[0], t_feats),
                                           batch, methods.Progress(step=0, epoch=0))
    return loss, (metrics, new_state)

  return jax.value_and_grad(total, argnums=(0, 1, 2, 3), has_aux=True)(
      params, s_out[0], s_out[1], t_out[1])


_jit_value_and_grads = jax.jit(_value_and_grads, static_argnums=0)


def _jax_results(name, params, state, s_out, t_out, batch) -> dict[str, np.ndarray]:
  """Loss, term, gradients (student outputs and params) and BN statistics, by name."""
  (value, (metrics, new_state)), (g_params, g_logits, g_feats, g_teacher) = _jit_value_and_grads(
      _method(name), params, state, s_out, t_out, batch)
  # Unused taps get exactly zero gradient, and the teacher is a constant.
  assert all(np.all(np.asarray(g) == 0) for g in g_feats["preact_feats"])
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_teacher))
  out = {"loss": value, f"loss_{name}": metrics[f"loss_{name}"], "d/d logits": g_logits,
         "d/d pooled": g_feats["pooled"]}
  out.update({f"d/d feats[{i}]": g for i, g in enumerate(g_feats["feats"])})
  with_path = jax.tree_util.tree_leaves_with_path
  out.update({f"d/d params: {parity.path(p)}": g for p, g in with_path(g_params)})
  out.update({f"state: {parity.path(p)}": v for p, v in with_path(new_state)})
  return {k: np.asarray(v) for k, v in out.items()}


# -------------------------------------------------- the PyTorch side, weights copied in

def _conv_reg_links(reg):
  return {"conv/kernel": (reg.conv.weight, parity.CONV), "conv/bias": (reg.conv.bias, parity.SAME),
          "bn/scale": (reg.bn.weight, parity.SAME), "bn/bias": (reg.bn.bias, parity.SAME)}


def _torch_fitnet(params, s, t, cfg):
  layer = cfg.fitnet.hint_layer
  f_s, f_t = s["feats"][layer], t["feats"][layer]
  reg = ref.ConvReg(tuple(f_s.shape[1:]), tuple(f_t.shape[1:])).to(f_s.dtype).train()
  links = parity.load(params, _conv_reg_links(reg))
  term = ref.fitnet(f_s, f_t, reg)
  return term, links, {"state: batch_stats/bn/mean": reg.bn.running_mean,
                       "state: batch_stats/bn/var": reg.bn.running_var}


def _torch_vid(params, s, t, cfg):
  g_s, g_t = s["feats"][1:], t["feats"][1:]
  stages, links = [], {}
  for k, (f_s, f_t) in enumerate(zip(g_s, g_t)):
    stage = ref.VIDStage(f_s.shape[1], f_t.shape[1], cfg.vid.init_pred_var, cfg.vid.eps)
    stages.append(stage.to(f_s.dtype))
    for i in range(3):
      links[f"stage{k + 1}/conv{i}/kernel"] = (stage.regressor[2 * i].weight, parity.CONV)
    links[f"stage{k + 1}/alpha"] = (stage.alpha, parity.SAME)
  parity.load(params, links)
  return ref.vid(g_s, g_t, stages), links, {}


def _torch_cc(params, s, t, cfg):
  f_s, f_t = s["pooled"], t["pooled"]
  embed_s = torch.nn.Linear(f_s.shape[1], cfg.cc.embed_dim).to(f_s.dtype)
  embed_t = torch.nn.Linear(f_t.shape[1], cfg.cc.embed_dim).to(f_t.dtype)
  links = parity.load(params, {"embed_s/kernel": (embed_s.weight, parity.DENSE),
                         "embed_s/bias": (embed_s.bias, parity.SAME),
                         "embed_t/kernel": (embed_t.weight, parity.DENSE),
                         "embed_t/bias": (embed_t.bias, parity.SAME)})
  return ref.cc(f_s, f_t, embed_s, embed_t), links, {}


# name -> fn(flax params, student feats, teacher feats, cfg) -> (term, {flax path: (torch param,
# layout maps)}, {result name: torch buffer} for state the method must reproduce).
_TORCH = {
    "fitnet": _torch_fitnet,
    "at": lambda p, s, t, cfg: (ref.at(s["feats"][1:], t["feats"][1:], cfg.at.p), {}, {}),
    "nst": lambda p, s, t, cfg: (ref.nst(s["feats"][1:], t["feats"][1:]), {}, {}),
    "pkt": lambda p, s, t, cfg: (ref.pkt(s["pooled"], t["pooled"], cfg.pkt.eps), {}, {}),
    "sp": lambda p, s, t, cfg: (ref.sp(s["feats"][-1], t["feats"][-1]), {}, {}),
    "rkd": lambda p, s, t, cfg: (ref.rkd(s["pooled"], t["pooled"], cfg.rkd.distance_weight,
                                         cfg.rkd.angle_weight, cfg.rkd.eps), {}, {}),
    "vid": _torch_vid,
    "cc": _torch_cc,
}


def _torch_results(name, params, s_out, t_out, batch, dtype) -> dict[str, np.ndarray]:
  """The same quantities as `_jax_results`, from the PyTorch reference in `dtype` (NCHW inside)."""
  cfg = recipes.base_config()
  tensor = lambda x, grad: torch.tensor(parity.nchw(np.asarray(x, dtype)), requires_grad=grad)
  feats = lambda out, grad: {"feats": [tensor(f, grad) for f in out[1]["feats"]],
                             "pooled": tensor(out[1]["pooled"], grad)}
  s, t = feats(s_out, True), feats(t_out, False)
  logits = tensor(s_out[0], True)
  params = jax.tree.map(lambda x: np.asarray(x, dtype), params)  # float32 -> float64 is exact
  term, links, buffers = _TORCH[name](params, s, t, cfg)
  ce = torch.nn.functional.cross_entropy(logits, torch.tensor(batch["label"], dtype=torch.long))
  total = cfg[name].ce_weight * ce + cfg[name].feat_weight * term
  total.backward()
  grad = lambda x: np.zeros(x.shape, dtype) if x.grad is None else x.grad.numpy()
  out = {"loss": total.detach().numpy(), f"loss_{name}": term.detach().numpy(),
         "d/d logits": grad(logits), "d/d pooled": grad(s["pooled"])}
  out.update({f"d/d feats[{i}]": parity.nhwc(grad(f)) for i, f in enumerate(s["feats"])})
  out.update({f"d/d params: {p}": to_flax(grad(param))
              for p, (param, (_, to_flax)) in links.items()})
  out.update({k: v.numpy() for k, v in buffers.items()})
  return out


# ---------------------------------------------------------------------- comparison


# ------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", METHODS)
def test_matches_torch_float64_cross_family(name):
  """float64: the same function as PyTorch, elementwise, on a cross-family pair."""
  teacher, student = CROSS_FAMILY[name]
  s_out, t_out = parity.outputs(student, 0, np.float64), parity.outputs(teacher, 1, np.float64)
  with jax.enable_x64(True):
    params, state = _init(name, s_out, t_out, np.float64)
    ours = _jax_results(name, params, state, s_out, t_out, parity.batch())
  assert ours["loss"].dtype == np.float64
  parity.assert_equal64(ours, _torch_results(name, params, s_out, t_out, parity.batch(), np.float64))


@pytest.mark.parametrize("name", METHODS)
def test_matches_torch_float32(name):
  """float32 on resnet32x4 -> resnet8x4: PyTorch's numbers to 1e-5, or as close to float64's."""
  teacher, student = SAME_FAMILY
  s_out, t_out = parity.outputs(student, 0), parity.outputs(teacher, 1)
  params, state = _init(name, s_out, t_out, np.float32)
  ours = _jax_results(name, params, state, s_out, t_out, parity.batch())
  assert ours["loss"].dtype == np.float32
  parity.assert_equal32(ours, _torch_results(name, params, s_out, t_out, parity.batch(), np.float32),
                  _torch_results(name, params, s_out, t_out, parity.batch(), np.float64))


@pytest.mark.parametrize("shapes", [((16, 16, 8), (8, 8, 12)), ((8, 8, 8), (16, 16, 12)),
                                    ((10, 10, 8), (8, 8, 12))],
                         ids=["stride2", "transposed", "valid3x3"])
def test_fitnet_regressor_branches_match_torch(shapes):
  """All three ConvReg convolutions (published pairs use only 'transposed' and 1x1 'valid')."""
  (s_h, s_w, s_c), (t_h, t_w, t_c) = shapes
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4, s_h, s_w, s_c))
  target = np.abs(rng.standard_normal((4, t_h, t_w, t_c)))
  module = fitnet.ConvReg((s_h, s_w, s_c), (t_h, t_w, t_c))
  batch_stats = {"bn": {"mean": np.zeros(t_c), "var": np.ones(t_c)}}
  with jax.enable_x64(True):
    abstract = jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0), x)
    params = parity.random_like(abstract["params"], 1, np.float64)
    value, (g_params, g_x) = jax.jit(jax.value_and_grad(
        lambda p, x: fitnet.hint_loss(p, batch_stats, x, target)[0], argnums=(0, 1)))(params, x)
  reg = ref.ConvReg((s_c, s_h, s_w), (t_c, t_h, t_w)).double().train()
  links = parity.load(params, _conv_reg_links(reg))
  xt = torch.tensor(parity.nchw(x), requires_grad=True)
  expected = ref.fitnet(xt, torch.tensor(parity.nchw(target)), reg)
  expected.backward()
  ours = {"loss": np.asarray(value), "d/d x": np.asarray(g_x)}
  ours.update({f"d/d params: {p}": np.asarray(parity.leaf(g_params, p)) for p in links})
  theirs = {"loss": expected.detach().numpy(), "d/d x": parity.nhwc(xt.grad.numpy())}
  theirs.update({f"d/d params: {p}": to_flax(param.grad.numpy())
                 for p, (param, (_, to_flax)) in links.items()})
  parity.assert_equal64(ours, theirs)


def test_adaptive_pool_matches_torch_on_uneven_windows():
  x = np.random.default_rng(0).standard_normal((2, 7, 5, 3)).astype(np.float32)
  expected = torch.nn.functional.adaptive_avg_pool2d(torch.tensor(parity.nchw(x)), (3, 2)).numpy()
  np.testing.assert_allclose(ops.adaptive_avg_pool(jnp.asarray(x), (3, 2)), parity.nhwc(expected),
                             rtol=1e-6, atol=1e-6)


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
  """Zero features (dead ReLUs), identical samples (RKD's i = j): loss and gradients finite."""
  teacher, student = SAME_FAMILY
  s_out, t_out = parity.outputs(student, 0), parity.outputs(teacher, 1)
  s_out = _degenerate(s_out, "zero" if case.startswith("zero") else "duplicate")
  if case == "zero_both":
    t_out = _degenerate(t_out, "zero")
  params, state = _init(name, s_out, t_out, np.float32)
  results = _jax_results(name, params, state, s_out, t_out, parity.batch())  # also: teacher grads == 0
  for key, value in results.items():
    assert np.all(np.isfinite(value)), key


# ------------------------------------------------------------- real train steps

# The compiled step is the one training runs; parity.FAST_COMPILE only makes CPU compilation ~6x
# cheaper (the smoke checks finiteness and updates, not speed). Cross-family students are left
# to the parity tests: a ShuffleV1 or MobileNetV2 step compiles for ~1 minute on 2 CPU cores.
SMOKE_RUNS = tuple((m, "resnet8x4", "resnet8") for m in METHODS)

_SMOKE_SCRIPT = r"""
import json, sys
import jax, numpy as np
from kdjax import data, models, recipes, train
dataset = data.load("digits")
images, labels = jax.numpy.asarray(dataset.train_images), jax.numpy.asarray(dataset.train_labels)
mesh = train.make_mesh(jax.devices()[:1])
teachers, out = {}, {}
leaves = jax.tree.leaves
changed = lambda a, b: [bool(np.any(x != y)) for x, y in zip(leaves(a), leaves(b))]
for method, teacher_arch, student in json.loads(sys.argv[1]):
  config = recipes.base_config()
  config.method, config.model, config.teacher.arch = method, student, teacher_arch
  config.batch_size = 16
  if teacher_arch not in teachers:
    module = models.get(teacher_arch, num_classes=10)
    x = np.zeros((1, 32, 32, 3), np.float32)
    teachers[teacher_arch] = module, jax.jit(module.init)(jax.random.key(1), x)
  teacher, tvars = teachers[teacher_arch]
  run = train.build(config, dataset, mesh, [train.Teacher(teacher, tvars)])
  before = jax.device_get((run.state.params["method"], run.state.method_state))
  alphas = [v["alpha"] for v in before[0].values()] if method == "vid" else []
  state, losses, perm = run.state, [], run.permute(jax.random.key(0))
  for _ in range(2):
    state, metrics = run.train_step(state, run.teacher_vars, images, labels, perm)
    losses.append(float(metrics["loss"]))
  after = jax.device_get((state.params["method"], state.method_state))
  out["/".join((method, teacher_arch, student))] = {
      "losses": losses, "term": float(metrics["loss_" + method]),
      "nonfinite_step": int(state.nonfinite_step),
      "params_changed": changed(before[0], after[0]), "state_changed": changed(before[1], after[1]),
      "initial_variances": [float(v) for a in alphas for v in np.log1p(np.exp(a)) + 1e-5]}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def smoke_results():
  """Runs every SMOKE_RUNS entry in one subprocess (one import, one dataset load)."""
  env = parity.cli_env()
  result = subprocess.run([sys.executable, "-c", _SMOKE_SCRIPT, json.dumps(SMOKE_RUNS)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("run", SMOKE_RUNS, ids="/".join)
def test_two_real_train_steps(smoke_results, run):
  """Two steps of the real trainer: finite losses; the method's params (and BN state) updated."""
  r = smoke_results["/".join(run)]
  assert np.all(np.isfinite(r["losses"])) and np.isfinite(r["term"]) and r["nonfinite_step"] == -1
  assert bool(r["params_changed"]) == (run[0] in ("fitnet", "vid", "cc"))
  assert all(r["params_changed"])
  assert bool(r["state_changed"]) == (run[0] == "fitnet") and all(r["state_changed"])
  if run[0] == "vid":  # sigma^2 starts at init_pred_var = 5 in every channel
    np.testing.assert_allclose(r["initial_variances"], 5.0, rtol=1e-6)
