"""AB, FT and FSP: the methods with a pre-stage. PyTorch parity, parameter masks, configs, CLI runs.

Parity follows tests/test_feature_baselines.py (its input builders and comparisons are reused):
random features of exactly the kdjax models' shapes, the methods' modules with identical
weights on both sides; float64 on a cross-family pair elementwise to 1e-9, float32 on a
same-family pair to 1e-5 (norm-wise) of PyTorch's float32 or as close as PyTorch is to float64.
Each loss is the one the trainer calls: `method.prestage.update.loss` (AB, FT's paraphraser
reconstruction, FSP) and `method.loss` (FT's main term with CE).
"""
import functools
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
import torch

from kdjax import methods, models, recipes
from kdjax.methods import ab
from experiments.repro import tables
from tests import parity
from tests.torch_reference import prestage as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROGRESS = methods.Progress(step=0, epoch=0)


def _cfg(name: str, student: str):
  cfg = recipes.base_config()
  cfg.method, cfg.model = name, student
  return cfg


@functools.lru_cache(maxsize=None)
def _method(name: str, student: str) -> methods.Method:
  return methods.get(name, _cfg(name, student))


# ------------------------------------------------------------------------ the JAX side


def _value_and_grads(loss_fn, params, state, s_out, t_out, batch):
  def total(params, s_logits, s_feats):
    loss, metrics, new_state = loss_fn(params, state, (s_logits, s_feats), t_out, batch, _PROGRESS)
    return loss, (metrics, new_state)

  return jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True)(params, s_out[0], s_out[1])


_jit_value_and_grads = jax.jit(_value_and_grads, static_argnums=0)


def _jax_results(loss_fn, params, state, s_out, t_out, tap, term_key=None):
  """Loss, (term), d/d logits, d/d the student maps of `tap`, d/d params, the new state."""
  (value, (metrics, new_state)), (g_params, g_logits, g_feats) = _jit_value_and_grads(
      loss_fn, params, state, s_out, t_out, parity.batch())
  for other in ("feats", "preact_feats", "pooled"):  # only `tap` reaches the loss
    if other != tap:
      assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_feats[other])), other
  out = {"loss": value, "d/d logits": g_logits}
  if term_key:
    out[term_key] = metrics[term_key]
  out.update({f"d/d {tap}[{i}]": g for i, g in enumerate(g_feats[tap])})
  with_path = jax.tree_util.tree_leaves_with_path
  out.update({f"d/d params: {parity.path(p)}": g for p, g in with_path(g_params)})
  out.update({f"state: {parity.path(p)}": v for p, v in with_path(new_state)})
  return {k: np.asarray(v) for k, v in out.items()}


def _init(name, student, s_out, t_out, dtype):
  """Random params in `init`'s shapes, BN statistics 0 / 1 (as test_feature_baselines does)."""
  params, state = jax.eval_shape(_method(name, student).init, jax.random.key(0), s_out, t_out, {})
  state = jax.tree_util.tree_map_with_path(
      lambda p, s: np.full(s.shape, 1.0 if parity.path(p).endswith("var") else 0.0, dtype), state)
  return parity.random_like(params, 3, dtype), state


# -------------------------------------------------- the PyTorch side, weights copied in


def _tensor(x, dtype, grad):
  return torch.tensor(parity.nchw(np.asarray(x, dtype)), requires_grad=grad)


def _torch_results(term_fn, params, s_out, t_out, tap, dtype, ce_weight=0.0, feat_weight=1.0,
                   term_key=None):
  """The quantities of `_jax_results` from `term_fn(params, student maps, teacher maps, dtype)`."""
  s_maps = [_tensor(f, dtype, True) for f in s_out[1][tap]]
  t_maps = [_tensor(f, dtype, False) for f in t_out[1][tap]]
  logits = _tensor(s_out[0], dtype, True)
  params = jax.tree.map(lambda x: np.asarray(x, dtype), params)
  term, links, buffers = term_fn(params, s_maps, t_maps, s_maps[0].dtype)  # a torch dtype
  total = feat_weight * term
  if ce_weight:
    labels = torch.tensor(parity.batch()["label"], dtype=torch.long)
    total = total + ce_weight * torch.nn.functional.cross_entropy(logits, labels)
  total.backward()
  grad = lambda x: np.zeros(x.shape, dtype) if x.grad is None else x.grad.numpy()
  out = {"loss": total.detach().numpy(), "d/d logits": grad(logits)}
  if term_key:
    out[term_key] = term.detach().numpy()
  out.update({f"d/d {tap}[{i}]": parity.nhwc(grad(f)) for i, f in enumerate(s_maps)})
  out.update({f"d/d params: {p}": to_flax(grad(param))
              for p, (param, (_, to_flax)) in links.items()})
  out.update({k: v.numpy() for k, v in buffers.items()})
  return out


def _conv_bn_links(prefix, conv, bn):
  links = {f"{prefix}conv/kernel": (conv.weight, parity.CONV),
           f"{prefix}conv/bias": (conv.bias, parity.SAME)}
  if bn is not None:
    links.update({f"{prefix}bn/scale": (bn.weight, parity.SAME),
                  f"{prefix}bn/bias": (bn.bias, parity.SAME)})
  return links


def _torch_ab(params, g_s, g_t, dtype, margin=1.0):
  g_s, g_t = g_s[1:], g_t[1:]
  connectors, links, buffers = [], {}, {}
  for k, (f_s, f_t) in enumerate(zip(g_s, g_t)):
    name = f"connector{k + 1}"
    if name not in params:
      connectors.append(None)
      continue
    conn = ref.ABConnector(tuple(f_s.shape[1:]), tuple(f_t.shape[1:])).to(dtype).train()
    connectors.append(conn)
    links.update(_conv_bn_links(f"{name}/", conn.conv, conn.bn))
    buffers[f"state: batch_stats/{name}/bn/mean"] = conn.bn.running_mean
    buffers[f"state: batch_stats/{name}/bn/var"] = conn.bn.running_var
  parity.load(params, links)
  return ref.ab(g_s, g_t, connectors, margin), links, buffers


def _paraphraser(params, channels, dtype):
  net = ref.Paraphraser(channels).to(dtype)
  links = {}
  for i in range(3):
    for part, seq in (("encoder", net.encoder), ("decoder", net.decoder)):
      links[f"paraphraser/{part}{i}/kernel"] = (seq[2 * i].weight, parity.CONV)
      links[f"paraphraser/{part}{i}/bias"] = (seq[2 * i].bias, parity.SAME)
  return net, parity.load(params, links)


def _torch_ft_reconstruction(params, g_s, g_t, dtype):
  del g_s
  f_t = g_t[-1]
  net, links = _paraphraser(params, f_t.shape[1], dtype)
  return ref.ft_reconstruction(f_t, net), links, {}


def _torch_ft(params, g_s, g_t, dtype):
  f_s, f_t = g_s[-1], g_t[-1]
  paraphraser, _ = _paraphraser(params, f_t.shape[1], dtype)  # frozen: no gradient compared
  translator = ref.Translator(f_s.shape[1], f_t.shape[1]).to(dtype).train()
  links, buffers = {}, {}
  for i in range(3):
    conv, bn = translator.encoder[3 * i], translator.encoder[3 * i + 1]
    links.update({f"translator/conv{i}/kernel": (conv.weight, parity.CONV),
                  f"translator/conv{i}/bias": (conv.bias, parity.SAME),
                  f"translator/bn{i}/scale": (bn.weight, parity.SAME),
                  f"translator/bn{i}/bias": (bn.bias, parity.SAME)})
    buffers[f"state: batch_stats/bn{i}/mean"] = bn.running_mean
    buffers[f"state: batch_stats/bn{i}/var"] = bn.running_var
  parity.load(params, links)
  return ref.ft(f_s, f_t, translator, paraphraser), links, buffers


def _torch_fsp(params, g_s, g_t, dtype):
  del params, dtype
  return ref.fsp(g_s, g_t), {}, {}


# name -> (loss_fn getter, student tap, torch term, ce weight, feat weight, term key)
CASES = {
    "ab_init": (lambda m: m.prestage.update.loss, "preact_feats", _torch_ab, 0.0, 1.0, "loss_ab"),
    "ft_init": (lambda m: m.prestage.update.loss, "feats", _torch_ft_reconstruction, 0.0, 1.0,
                "loss_paraphraser"),
    "ft_main": (lambda m: m.loss, "feats", _torch_ft, 1.0, 200.0, "loss_ft"),
    "fsp_init": (lambda m: m.prestage.update.loss, "feats", _torch_fsp, 0.0, 1.0, "loss_fsp"),
}
# Cross-family pairs, float64: AB's 1x1 and transposed connectors (MobileNetV2's 2x2 last map vs
# the teacher's 4x4); FT's translator on ShuffleV2 and the teacher factor pooled 8x8 -> 4x4; FSP
# has same-family pairs only (VGG: five maps, two of them 4x4).
PAIRS64 = {"ab_init": ("vgg13", "MobileNetV2"), "ft_init": ("vgg13", "MobileNetV2"),
           "ft_main": ("resnet32x4", "ShuffleV2"), "fsp_init": ("vgg13", "vgg8")}
# float32 pairs: AB with 1x1 connectors (equal heights, channels differ).
PAIRS32 = {"ab_init": ("wrn_40_2", "wrn_40_1"), "ft_init": ("resnet32x4", "resnet8x4"),
           "ft_main": ("resnet32x4", "resnet8x4"), "fsp_init": ("resnet32x4", "resnet8x4")}


def _both(case, teacher, student, dtype):
  method_name = case.split("_")[0]
  get_loss, tap, torch_term, ce_weight, feat_weight, key = CASES[case]
  s_out, t_out = parity.outputs(student, 0, dtype), parity.outputs(teacher, 1, dtype)
  loss_fn = get_loss(_method(method_name, student))
  with jax.enable_x64(dtype == np.float64):
    params, state = _init(method_name, student, s_out, t_out, dtype)
    ours = _jax_results(loss_fn, params, state, s_out, t_out, tap, key)
  if case == "ft_main":  # the paraphraser is frozen in the main loss: exactly no gradient
    frozen = [k for k in ours if k.startswith("d/d params: paraphraser/")]
    assert frozen and all(np.all(ours.pop(k) == 0) for k in frozen)
  if case == "ft_init":  # only the paraphraser is in the reconstruction; the state passes through
    assert all(np.all(ours.pop(k) == 0) for k in list(ours) if "params: translator" in k)
    for k in [k for k in ours if k.startswith("state:")]:
      value = ours.pop(k)
      assert np.array_equal(value, np.full_like(value, float(k.endswith("var")))), k
  theirs = functools.partial(_torch_results, torch_term, params, s_out, t_out, tap,
                             ce_weight=ce_weight, feat_weight=feat_weight, term_key=key)
  return ours, theirs


@pytest.mark.parametrize("case", CASES)
def test_matches_torch_float64_cross_family(case):
  ours, theirs = _both(case, *PAIRS64[case], np.float64)
  assert ours["loss"].dtype == np.float64
  parity.assert_equal64(ours, theirs(np.float64))


@pytest.mark.parametrize("case", CASES)
def test_matches_torch_float32(case):
  ours, theirs = _both(case, *PAIRS32[case], np.float32)
  assert ours["loss"].dtype == np.float32
  parity.assert_equal32(ours, theirs(np.float32), theirs(np.float64))


@pytest.mark.parametrize("shapes", [((16, 16, 8), (8, 8, 12)), ((8, 8, 8), (16, 16, 12)),
                                    ((10, 10, 8), (8, 8, 12))],
                         ids=["stride2", "transposed", "valid3x3"])
def test_ab_connector_branches_match_torch(shapes):
  """All three connector convolutions (the published pairs use the transposed and 1x1 ones)."""
  s_shape, t_shape = shapes
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4, *s_shape))
  target = rng.standard_normal((4, *t_shape))
  module = ab.Connector(s_shape, t_shape)
  stats = {"connector1": {"bn": {"mean": np.zeros(t_shape[-1]), "var": np.ones(t_shape[-1])}}}
  with jax.enable_x64(True):
    abstract = jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0), x)
    params = {"connector1": parity.random_like(abstract["params"], 1, np.float64)}
    value, (g_params, g_x) = jax.jit(jax.value_and_grad(
        lambda p, x: ab.ab_loss(p, stats, [(x, target)], 1.0)[0], argnums=(0, 1)))(params, x)
  conn = ref.ABConnector(parity.nchw(x).shape[1:], parity.nchw(target).shape[1:]).double().train()
  links = parity.load(params, _conv_bn_links("connector1/", conn.conv, conn.bn))
  xt = torch.tensor(parity.nchw(x), requires_grad=True)
  expected = ref.ab([xt], [torch.tensor(parity.nchw(target))], [conn])
  expected.backward()
  ours = {"loss": np.asarray(value), "d/d x": np.asarray(g_x)}
  ours.update({f"d/d params: {p}": np.asarray(parity.leaf(g_params, p)) for p in links})
  theirs = {"loss": expected.detach().numpy(), "d/d x": parity.nhwc(xt.grad.numpy())}
  theirs.update({f"d/d params: {p}": to_flax(param.grad.numpy())
                 for p, (param, (_, to_flax)) in links.items()})
  parity.assert_equal64(ours, theirs)


def test_ab_loss_formula_by_hand():
  """One element per case of the boundary L2, stage weights 1/4, 1/2, 1, the 3/(1000 B) scale."""
  s = np.array([[[[0.5]]], [[[-2.0]]]])          # B = 2, one 1x1x1 map per sample
  t = np.array([[[[-1.0]]], [[[3.0]]]])
  # sample 0: teacher off, s > -1 -> (0.5 + 1)^2; sample 1: teacher on, s <= 1 -> (-2 - 1)^2.
  per_stage = (1.5 ** 2 + 3.0 ** 2) / 2 * 3 / 1000
  with jax.enable_x64(True):
    value, _ = ab.ab_loss({}, {}, [(s, t)] * 3, 1.0)
  np.testing.assert_allclose(float(value), per_stage * (0.25 + 0.5 + 1.0), rtol=1e-12)
  with jax.enable_x64(True):  # satisfied boundaries cost nothing
    zero, _ = ab.ab_loss({}, {}, [(np.array([[[[-1.5]]]]), np.array([[[[-1.0]]]]))], 1.0)
  assert float(zero) == 0.0


@pytest.mark.parametrize("name", ["ab", "ft", "fsp"])
def test_finite_at_zero_features(name):
  """All-zero maps (dead ReLUs, FT's normalised factor of zeros): finite value and gradients."""
  teacher, student = PAIRS32[f"{name}_init"]
  s_out, t_out = parity.outputs(student, 0), parity.outputs(teacher, 1)
  zero = lambda out: (out[0], jax.tree.map(np.zeros_like, out[1]))
  s_out, t_out = zero(s_out), zero(t_out)
  method = _method(name, student)
  params, state = _init(name, student, s_out, t_out, np.float32)
  tap = CASES[f"{name}_init"][1]
  for loss_fn in (method.prestage.update.loss, method.loss):
    results = _jax_results(loss_fn, params, state, s_out, t_out, tap)
    for key, value in results.items():
      assert np.all(np.isfinite(value)), (name, key)


# ------------------------------------------------------------------------- masks


def _paths(tree):
  return [tuple(str(getattr(k, "key", k)) for k in p) for p, _ in
          jax.tree_util.tree_leaves_with_path(tree)]


@functools.lru_cache(maxsize=None)
def _student_params(arch):
  model = models.get(arch, num_classes=100)
  x = np.zeros((1, 32, 32, 3), np.float32)
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)["params"]


@pytest.mark.parametrize("arch,head", [
    ("resnet8x4", {"fc"}), ("resnet20", {"fc"}), ("wrn_16_2", {"bn1", "fc"}),
    ("vgg8", {"classifier"}), ("MobileNetV2", {"conv2", "classifier"}),
    ("ShuffleV1", {"linear"}), ("ShuffleV2", {"conv2", "bn2", "linear"})])
def test_feature_layer_mask_is_repdistillers_get_feat_modules(arch, head):
  """AB's / FSP's pre-stage moves the method and every student group but the classifier head."""
  tree = {"student": _student_params(arch), "method": {"connector1": {"conv": {"kernel": 0}}}}
  for name in ("ab", "fsp"):
    trains = _method(name, arch).prestage.update.trains
    moved = {p[1] for p in _paths(tree) if p[0] == "student" and trains(p)}
    assert moved == set(tree["student"]) - head and head <= set(tree["student"]), (name, moved)
    assert trains(("method", "connector1", "conv", "kernel"))
    main = _method(name, arch).trains
    assert not main(("method", "connector1", "conv", "kernel"))
    assert main(("student", "fc", "kernel"))


def _masked_step(tree, trains, optimizer):
  """One optax step of `optimizer` on the parameters `trains` selects; the others get no update."""
  labels = jax.tree_util.tree_map_with_path(
      lambda p, _: "train" if trains(tuple(str(getattr(k, "key", k)) for k in p)) else "frozen",
      tree)
  tx = optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)
  grads = jax.tree.map(np.ones_like, tree)
  updates, _ = tx.update(grads, tx.init(tree), tree)
  return optax.apply_updates(tree, updates)


def test_ab_prestage_update_leaves_the_classifier_untouched():
  """A masked SGD step with AB's pre-stage Update: fc identical, features and connectors moved."""
  teacher, student = "resnet8x4", "resnet8"
  s_out, t_out = parity.outputs(student, 0), parity.outputs(teacher, 1)
  method = _method("ab", student)
  params, _ = _init("ab", student, s_out, t_out, np.float32)
  assert set(params) == {"connector1", "connector2", "connector3"}  # 16/32/64 -> 64/128/256 ch
  tree = {"student": parity.random_like(_student_params(student), 0, np.float32), "method": params}
  update = method.prestage.update
  new = _masked_step(tree, update.trains, update.optimizer(10)[0])
  same = lambda a, b: all(np.array_equal(x, y)
                          for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert same(new["student"]["fc"], tree["student"]["fc"])
  for group in ("conv1", "bn1", "layer1", "layer2", "layer3"):
    assert not same(new["student"][group], tree["student"][group]), group
  assert not same(new["method"], tree["method"])
  # SGD at the run's LR 0.05 with coupled L2 5e-4: w - 0.05 * (1 + 5e-4 w) on the first step.
  w = tree["student"]["conv1"]["kernel"]
  np.testing.assert_allclose(new["student"]["conv1"]["kernel"], w - 0.05 * (1 + 5e-4 * w),
                             rtol=1e-6)


def test_ft_masks_pretrain_then_freeze_the_paraphraser():
  teacher, student = "resnet8x4", "resnet8"
  s_out, t_out = parity.outputs(student, 0), parity.outputs(teacher, 1)
  params, _ = _init("ft", student, s_out, t_out, np.float32)
  tree = {"student": parity.random_like(_student_params(student), 0, np.float32), "method": params}
  method = _method("ft", student)
  pre = {p for p in _paths(tree) if method.prestage.update.trains(p)}
  main = {p for p in _paths(tree) if method.trains(p)}
  assert pre and all(p[:2] == ("method", "paraphraser") for p in pre)
  assert main == set(_paths(tree)) - pre  # the student and the translator
  new = _masked_step(tree, method.prestage.update.trains, method.prestage.update.optimizer(10)[0])
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(new["student"]),
                                                 jax.tree.leaves(tree["student"])))


# ------------------------------------------------------------------------- configs


def _config_module(name):
  return recipes.load_config_module(os.path.join(ROOT, "configs", f"{name}_cifar.py"))


def _abstract_outputs(arch):
  feats, preacts, pooled = parity.shapes(arch)
  s = lambda shape: jax.ShapeDtypeStruct((2, *shape), np.float32)
  return (s((100,)), {"feats": tuple(s(f) for f in feats),
                      "preact_feats": tuple(s(f) for f in preacts), "pooled": s(pooled)})


@pytest.mark.parametrize("name", ["ab", "ft", "fsp"])
def test_configs_every_published_pair_builds(name):
  """Every pair: a REPORTED number, 30 pre-stage epochs at the published LR, `init` runs."""
  module = _config_module(name)
  assert set(module.PAIRS) == set(tables.REPORTED[f"{name}_cifar"])
  assert len(module.PAIRS) == (6 if name == "fsp" else 13)
  for pair in module.PAIRS:
    teacher, student = pair.split(",")
    cfg = module.get_config(pair)
    method = methods.get(cfg.method, cfg)
    assert method.prestage.epochs == 30 and cfg.optim.lr == recipes.student_lr(student)
    resnet_wrn = re.match(r"(resnet\d|wrn_)", student) is not None
    expected_lr = 0.01 if name == "ft" and resnet_wrn else cfg.optim.lr
    assert (cfg[name].init_lr or cfg.optim.lr) == expected_lr, pair
    jax.eval_shape(method.init, jax.random.key(0), _abstract_outputs(student),
                   _abstract_outputs(teacher), {})
  if name == "fsp":  # FSP refuses unequal channel counts, as RepDistiller
    with pytest.raises(Exception, match="equal channel"):
      jax.eval_shape(_method("fsp", "wrn_40_1").init, jax.random.key(0),
                     _abstract_outputs("wrn_40_1"), _abstract_outputs("wrn_40_2"), {})


# --------------------------------------------------------------- end to end (CLI)

# One resnet8x4 teacher (trained once, 1 epoch) for every run. Same family: resnet8x4 -> resnet8
# (AB's 1x1 connectors, 64 -> 256 channels; FSP: resnet8x4 -> resnet8x4, equal channels);
# cross-family: the CIFAR ResNet teacher -> the pre-activation WRN student (WRN's preact taps).
# The transposed connectors of the cross-family published pairs are in the parity tests; a
# ShuffleNet / MobileNetV2 step costs ~1 minute of compilation per phase on 2 CPU cores.
E2E_RUNS = [("ab", "resnet8"), ("ab", "wrn_16_1"), ("ft", "resnet8"), ("ft", "wrn_16_1"),
            ("fsp", "resnet8x4")]
_TEACHER = "resnet8x4"
_INIT_LOSS_KEY = {"ab": "train_loss_ab", "ft": "train_loss_paraphraser", "fsp": "train_loss_fsp"}


def _cli(args, workdir):
  """Runs tests/mocked_main.py on 64 mocked CIFAR-100 images (2 steps of 32 per epoch)."""
  env = parity.cli_env(KDJAX_MOCK_EXAMPLES="64")
  common = ["--config.epochs=1", "--config.batch_size=32", "--config.eval_batch_size=64",
            "--config.progress_bar=False", f"--workdir={workdir}"]
  result = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "mocked_main.py"), *args,
                           *common], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("teacher") / _TEACHER)
  _cli([f"--config=configs/teacher_cifar.py:{_TEACHER}"], workdir)
  return workdir


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.mark.long
@pytest.mark.parametrize("run", E2E_RUNS, ids="/".join)
def test_prestage_then_two_main_steps_via_cli(teacher_dir, tmp_path, run):
  """1 pre-stage epoch (2 steps) with the method's init loss, then 1 main epoch (2 steps)."""
  name, student = run
  workdir = str(tmp_path / "run")
  result = _cli([f"--config=configs/{name}_cifar.py", f"--config.model={student}",
                 f"--config.teacher.arch={_TEACHER}", f"--config.teacher.checkpoint={teacher_dir}",
                 f"--config.{name}.init_epochs=1"], workdir)
  assert "prestage of 1 epoch" in result.stdout
  (pre,) = _jsonl(os.path.join(workdir, "prestage", "metrics.jsonl"))
  assert np.isfinite(pre[_INIT_LOSS_KEY[name]]) and pre[_INIT_LOSS_KEY[name]] > 0
  assert pre["train_loss"] == pre[_INIT_LOSS_KEY[name]]  # the pre-stage loss is the init loss alone
  (main,) = _jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert np.isfinite(main["train_loss"]) and np.isfinite(main["train_loss_ce"])
  if name == "ft":
    assert np.isfinite(main["train_loss_ft"]) and main["train_loss_ft"] > 0
  else:  # AB and FSP train with CE alone after their initialisation
    assert main["train_loss"] == main["train_loss_ce"]
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert (results["method"], results["student"], results["epochs"]) == (name, student, 1)
