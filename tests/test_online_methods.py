"""Online methods DML, KDCL, AFD and the cohort model: PyTorch parity, cohort semantics, runs.

Parity: each loss against tests/torch_reference/online_losses.py on the same inputs and
weights, value and gradient, in float64 (to 1e-9, elementwise) and float32 (to 1e-5,
norm-wise relative), as the feature-method tests do.
"""
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from kdjax import checkpoint, methods, models, recipes
from kdjax.errors import UserError
from kdjax.methods import afd, dml, kdcl
from kdjax.models import cohort
from experiments.repro import tables
from tests import parity
from tests.torch_reference import online_losses as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL = {np.float32: 1e-5, np.float64: 1e-9}
BATCH, CLASSES = 8, 10


def _assert_close(ours, theirs, dtype, what):
  """float64: elementwise; float32: norm-wise relative (rounding differs in summation order)."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
  rtol = RTOL[dtype]
  if dtype == np.float64:
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * np.max(np.abs(theirs)), err_msg=what)
  else:
    assert np.linalg.norm(ours - theirs) <= rtol * np.linalg.norm(theirs) + 1e-12, what


def _x64(dtype):
  """jax.enable_x64 for float64 cases, a no-op context otherwise."""
  return jax.enable_x64(dtype == np.float64)


def _logits(num, dtype, seed=0, scale=3.0):
  rng = np.random.default_rng(seed)
  return [(scale * rng.standard_normal((BATCH, CLASSES))).astype(dtype) for _ in range(num)]


def _labels(seed=1, unlabelled=True):
  y = np.random.default_rng(seed).integers(0, CLASSES, BATCH).astype(np.int64)
  if unlabelled:
    y[3] = -1  # STL-10's unlabelled split marks examples with -1: CE skips them
  return y


def _torch_grads(loss_fn, arrays):
  ts = [torch.tensor(a, requires_grad=True) for a in arrays]
  value = loss_fn(ts)
  value.backward()
  return value.detach().numpy(), [t.grad.numpy() for t in ts]


# --------------------------------------------------------------------- DML / AFD logits


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("num,temperature,rule", [(2, 1.0, "all"), (2, 3.0, "cyclic"),
                                                  (3, 1.0, "all"), (3, 4.0, "cyclic")])
def test_mutual_loss_matches_torch(dtype, num, temperature, rule):
  """DML's loss and AFD's logit loss: value and gradient w.r.t. every member's logits."""
  zs, y = _logits(num, dtype), _labels()
  with _x64(dtype):
    fn = lambda zs: dml.mutual_loss(zs, jnp.asarray(y), temperature, 0.7, rule)[0]
    value, grads = jax.value_and_grad(fn)([jnp.asarray(z) for z in zs])
  t_value, t_grads = _torch_grads(
      lambda ts: ref.mutual_loss(ts, torch.tensor(y), temperature, 0.7, rule), zs)
  _assert_close(value, t_value, dtype, "loss")
  for k, (g, tg) in enumerate(zip(grads, t_grads)):
    _assert_close(g, tg, dtype, f"d/d logits{k}")


def test_mutual_loss_peers_are_constants():
  """d L / d z_k is the gradient of member k's own term only (the peers' outputs are targets)."""
  zs, y = [jnp.asarray(z) for z in _logits(3, np.float32)], jnp.asarray(_labels())
  grads = jax.grad(lambda zs: dml.mutual_loss(zs, y, 2.0, 1.0, "all")[0])(zs)
  for k in range(3):
    ces, kls = None, None

    def own(z, k=k):
      others = list(zs)
      others[k] = z
      ces, kls = dml.mutual_terms(others, y, 2.0, "all")
      return ces[k] + kls[k]

    np.testing.assert_allclose(grads[k], jax.grad(own)(zs[k]), rtol=1e-6, atol=1e-8)
  assert dml.peers(0, 3, "cyclic") == [2] and dml.peers(1, 3, "all") == [0, 2]


# ----------------------------------------------------------------------------- KDCL


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", kdcl.RULES)
def test_kdcl_matches_torch(dtype, rule):
  """The fused target of each rule, and the KDCL loss' value and gradients."""
  zs, y = _logits(3, dtype, seed=2), _labels()
  with _x64(dtype):
    target = kdcl.ensemble_target([jnp.asarray(z) for z in zs], jnp.asarray(y), rule)
    fn = lambda zs: kdcl.kdcl_loss(zs, jnp.asarray(y), 2.0, 0.5, rule)[0]
    value, grads = jax.value_and_grad(fn)([jnp.asarray(z) for z in zs])
  t_target = ref.kdcl_target([torch.tensor(z) for z in zs], torch.tensor(y), rule).numpy()
  _assert_close(target, t_target, dtype, "target")
  t_value, t_grads = _torch_grads(lambda ts: ref.kdcl_loss(ts, torch.tensor(y), 2.0, 0.5, rule), zs)
  _assert_close(value, t_value, dtype, "loss")
  for k, (g, tg) in enumerate(zip(grads, t_grads)):
    _assert_close(g, tg, dtype, f"d/d logits{k}")


def test_kdcl_rules_semantics():
  """naive picks the per-example best peer; min_logit has target logit 0 and the lowest others;
  linear's weights lower the ensemble's CE below the uniform mix."""
  zs = [jnp.asarray(z) for z in _logits(3, np.float32, seed=4)]
  y = jnp.asarray(_labels(unlabelled=False))
  naive = kdcl.ensemble_target(zs, y, "naive")
  nll = np.stack([-np.asarray(jax.nn.log_softmax(z))[np.arange(BATCH), np.asarray(y)] for z in zs])
  for b in range(BATCH):
    np.testing.assert_array_equal(naive[b], zs[int(np.argmin(nll[:, b]))][b])
  ml = np.asarray(kdcl.ensemble_target(zs, y, "min_logit"))
  np.testing.assert_array_equal(ml[np.arange(BATCH), np.asarray(y)], 0.0)
  for z in zs:
    shifted = np.asarray(z) - np.asarray(z)[np.arange(BATCH), np.asarray(y)][:, None]
    assert np.all(ml <= shifted + 1e-6)
  stacked = jnp.stack(zs)
  a = kdcl.linear_weights(stacked, y, y >= 0, 50, 0.1)
  np.testing.assert_allclose(float(jnp.sum(a)), 1.0, rtol=1e-6)
  assert np.all(np.asarray(a) >= 0)
  ce = lambda w: float(methods.cross_entropy(jnp.einsum("k,kbc->bc", w, stacked), y))
  assert ce(a) < ce(jnp.full((3,), 1 / 3))


# ------------------------------------------------------------------------------ AFD

_CONV = lambda k: k.transpose(3, 2, 0, 1)


def _afd_inputs(shapes, dtype, seed=0):
  """Non-negative NHWC maps of `shapes` and randomised AFD params (BN scales around 1)."""
  rng = np.random.default_rng(seed)
  maps = [np.maximum(rng.standard_normal((4, *s)), 0.0).astype(dtype) for s in shapes]
  with _x64(dtype):
    common = afd.feature_maps([(None, {"feats": [jnp.asarray(m)]}) for m in maps], "feats")
    shape_tree = jax.eval_shape(afd.init_params, jax.random.key(0), common)

  def leaf(path, s):
    v = 0.2 * rng.standard_normal(s.shape)
    return (v + 1.0 if path[-1].key == "scale" else v).astype(dtype)

  return maps, jax.tree_util.tree_map_with_path(leaf, shape_tree)


def _torch_modules(params, maps_nchw, dtype, sigmoid=True):
  """Torch transfer layers and discriminators with the Flax weights copied in."""
  c = min(m.shape[1] for m in maps_nchw)
  h = min(m.shape[2] for m in maps_nchw)
  w = min(m.shape[3] for m in maps_nchw)
  tdtype = torch.float64 if dtype == np.float64 else torch.float32
  transfers, discs = [], []
  with torch.no_grad():
    for k, m in enumerate(maps_nchw):
      t = None
      if f"transfer{k}" in params:
        p = params[f"transfer{k}"]
        t = ref.Transfer(m.shape[1], c).to(tdtype)
        t.conv.weight.copy_(torch.tensor(_CONV(np.asarray(p["conv"]["kernel"]))))
        t.bn.weight.copy_(torch.tensor(np.asarray(p["bn"]["scale"])))
        t.bn.bias.copy_(torch.tensor(np.asarray(p["bn"]["bias"])))
      transfers.append(t)
      p = params[f"disc{k}"]
      hidden = p["conv1"]["kernel"].shape[-1]
      d = ref.Discriminator(c, hidden, (h, w), sigmoid=sigmoid).to(tdtype)
      d.conv1.weight.copy_(torch.tensor(_CONV(np.asarray(p["conv1"]["kernel"]))))
      d.bn1.weight.copy_(torch.tensor(np.asarray(p["bn1"]["scale"])))
      d.bn1.bias.copy_(torch.tensor(np.asarray(p["bn1"]["bias"])))
      d.conv2.weight.copy_(torch.tensor(_CONV(np.asarray(p["conv2"]["kernel"]))))
      d.conv2.bias.copy_(torch.tensor(np.asarray(p["conv2"]["bias"])))
      discs.append(d)
  return transfers, discs


def _nchw(x):
  return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))


# K = 2 with different channels and sizes (a transfer layer, a pooled map); K = 3 cyclic.
AFD_COHORTS = {"pair_heterogeneous": [(8, 8, 6), (4, 4, 12)], "three_cyclic": [(4, 4, 5)] * 3}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cohort_name", sorted(AFD_COHORTS))
def test_afd_adversarial_matches_torch(dtype, cohort_name):
  """LSGAN G and D terms, and their gradients: maps and transfer layers from the generator terms,
  discriminators from the discriminator terms."""
  maps, params = _afd_inputs(AFD_COHORTS[cohort_name], dtype)
  with _x64(dtype):
    def total(params, maps):
      common = afd.feature_maps([(None, {"feats": [m]}) for m in maps], "feats")
      return afd.adversarial_loss(params, common)

    (value, metrics), (g_params, g_maps) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
        params, [jnp.asarray(m) for m in maps])
  maps_t = [torch.tensor(_nchw(m), requires_grad=True) for m in maps]
  transfers, discs = _torch_modules(params, [m.detach().numpy() for m in maps_t], dtype)
  g_loss, d_loss = ref.afd_adversarial(maps_t, transfers, discs)
  t_params = [p for t in transfers if t is not None for p in (t.conv.weight, t.bn.weight, t.bn.bias)]
  g_grads = torch.autograd.grad(g_loss, maps_t + t_params)
  d_params = [p for d in discs for p in (d.conv1.weight, d.bn1.weight, d.bn1.bias, d.conv2.weight,
                                         d.conv2.bias)]
  d_grads = torch.autograd.grad(d_loss, d_params)

  _assert_close(metrics["loss_adv_g"], g_loss.detach().numpy(), dtype, "L_G")
  _assert_close(metrics["loss_adv_d"], d_loss.detach().numpy(), dtype, "L_D")
  _assert_close(value, (g_loss + d_loss).detach().numpy(), dtype, "L_G + L_D")
  for k, g in enumerate(g_maps):
    _assert_close(np.transpose(g, (0, 3, 1, 2)), g_grads[k].numpy(), dtype, f"d/d map{k}")
  ours_t = [x for k in range(len(maps)) if f"transfer{k}" in params
            for x in (_CONV(np.asarray(g_params[f"transfer{k}"]["conv"]["kernel"])),
                      g_params[f"transfer{k}"]["bn"]["scale"], g_params[f"transfer{k}"]["bn"]["bias"])]
  assert len(ours_t) == (3 if cohort_name == "pair_heterogeneous" else 0)
  for i, (o, t) in enumerate(zip(ours_t, g_grads[len(maps):])):
    _assert_close(o, t.numpy(), dtype, f"d/d transfer param {i}")
  ours_d = [x for k in range(len(maps)) for x in (
      _CONV(np.asarray(g_params[f"disc{k}"]["conv1"]["kernel"])), g_params[f"disc{k}"]["bn1"]["scale"],
      g_params[f"disc{k}"]["bn1"]["bias"], _CONV(np.asarray(g_params[f"disc{k}"]["conv2"]["kernel"])),
      g_params[f"disc{k}"]["conv2"]["bias"])]
  for i, (o, t) in enumerate(zip(ours_d, d_grads)):
    _assert_close(o, t.numpy(), dtype, f"d/d disc param {i}")


@pytest.mark.parametrize("sigmoid", [True, False])
def test_discriminator_and_lsgan_match_torch(sigmoid):
  """D's forward (train-mode BN on the batch it is given) and the two LSGAN losses."""
  maps, params = _afd_inputs([(4, 4, 6), (4, 4, 6)], np.float64, seed=3)
  with jax.enable_x64(True):
    d_ours = afd.discriminate(params["disc0"], jnp.asarray(maps[0]), 6, sigmoid, 0.2)
    d_ours_real = afd.discriminate(params["disc0"], jnp.asarray(maps[1]), 6, sigmoid, 0.2)
    g, d = afd.lsgan_g(d_ours), afd.lsgan_d(d_ours_real, d_ours)
    d_ours, g, d = np.asarray(d_ours), np.asarray(g), np.asarray(d)
  _, discs = _torch_modules(params, [_nchw(m) for m in maps], np.float64, sigmoid)
  with torch.no_grad():
    d_t = discs[0](torch.tensor(_nchw(maps[0])))
    d_t_real = discs[0](torch.tensor(_nchw(maps[1])))
  _assert_close(d_ours, d_t.numpy(), np.float64, "D(f)")
  assert d_ours.shape == (4,) and (not sigmoid or np.all((d_ours > 0) & (d_ours < 1)))
  _assert_close(g, ref.lsgan_g(d_t).numpy(), np.float64, "L_G")
  _assert_close(d, ref.lsgan_d(d_t_real, d_t).numpy(), np.float64, "L_D")


def test_afd_adam_matches_torch_adam_with_weight_decay():
  """The adversarial pass' optimizer is PyTorch Adam(weight_decay) and decays at 75/150."""
  fields = recipes.base_config().afd.to_dict()
  fields["adv_lr"] = 1e-2
  tx, _ = afd.adam(fields, steps_per_epoch=2)
  rng = np.random.default_rng(0)
  w0 = rng.standard_normal(5)
  grads = [rng.standard_normal(5) for _ in range(3)]
  with jax.enable_x64(True):
    w, state = jnp.asarray(w0), tx.init(jnp.asarray(w0))
    for g in grads:
      u, state = tx.update(jnp.asarray(g), state, w)
      w = optax.apply_updates(w, u)
  wt = torch.tensor(w0, requires_grad=True)
  opt = torch.optim.Adam([wt], lr=1e-2, weight_decay=0.1)
  for g in grads:
    wt.grad = torch.tensor(g)
    opt.step()
  np.testing.assert_allclose(np.asarray(w), wt.detach().numpy(), rtol=1e-12)
  schedule = afd.adam_schedule(2e-5, (75, 150), 0.1, steps_per_epoch=10)
  np.testing.assert_allclose([schedule(s) for s in (0, 749, 750, 1499, 1500)],
                             [2e-5, 2e-5, 2e-6, 2e-6, 2e-7], rtol=1e-6)


def test_afd_pass_masks():
  """SGD moves only the networks; Adam moves discriminators, transfers and feature extractors."""
  cfg = recipes.base_config()
  cfg.model = "resnet8+wrn_16_1"
  m = methods.get("afd", cfg)
  assert not m.needs_teacher and len(m.extra_updates) == 1
  adv = m.extra_updates[0]
  conv = ("student", "member0", "layer1", "0", "conv1", "kernel")
  for fc in (("student", "member0", "fc", "kernel"), ("student", "member1", "linear", "bias"),
             ("student", "member1", "classifier", "kernel")):
    assert m.trains(fc) and not adv.trains(fc)
  disc = ("method", "disc0", "conv1", "kernel")
  assert m.trains(conv) and adv.trains(conv)
  assert not m.trains(disc) and adv.trains(disc)
  assert adv.optimizer is not None


def test_finite_at_extreme_inputs():
  """Huge margins, every temperature, zero (dead) feature maps: finite values and gradients."""
  zs = [jnp.asarray(z) for z in _logits(3, np.float32, scale=1e4)]
  y = jnp.asarray(_labels())
  for t in (0.5, 1.0, 4.0, 8.0):
    for fn in (lambda zs: dml.mutual_loss(zs, y, t, 1.0, "all")[0],
               *[lambda zs, r=r: kdcl.kdcl_loss(zs, y, t, 1.0, r)[0] for r in kdcl.RULES]):
      value, grads = jax.value_and_grad(fn)(zs)
      assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)
  maps, params = _afd_inputs([(4, 4, 6), (4, 4, 12)], np.float32)
  zero = [jnp.zeros_like(jnp.asarray(m)) for m in maps]
  value, grads = jax.value_and_grad(
      lambda p, ms: afd.adversarial_loss(p, ms)[0], argnums=(0, 1))(params, zero)
  assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_methods_refuse_a_plain_model():
  """An online method on a single network says how to name a cohort."""
  out = (jnp.zeros((2, 10)), {"feats": (), "pooled": jnp.zeros((2, 4))})
  for name in ("dml", "kdcl", "afd"):
    with pytest.raises(UserError, match="cohort"):
      methods.get(name, recipes.base_config()).loss({}, {}, out, None,
                                                    {"label": jnp.zeros(2, jnp.int32)}, None)


def test_dml_alternate_passes():
  """dml.alternate: pass k moves member k only, with member k's own loss."""
  cfg = recipes.base_config()
  cfg.model, cfg.dml.alternate = "resnet8+resnet8+resnet8", True
  m = methods.get("dml", cfg)
  assert len(m.extra_updates) == 2
  masks = [m.trains] + [u.trains for u in m.extra_updates]
  for k, mask in enumerate(masks):
    assert [mask(("student", f"member{j}", "fc", "kernel")) for j in range(3)] == [j == k for j in range(3)]
  zs = [jnp.asarray(z) for z in _logits(3, np.float32)]
  y = jnp.asarray(_labels())
  out = (zs[0], {"members": [(z, {}) for z in zs]})
  ces, kls = dml.mutual_terms(zs, y, 1.0, "all")
  for k, fn in enumerate([m.loss] + [u.loss for u in m.extra_updates]):
    value = fn({}, {}, out, None, {"label": y}, None)[0]
    np.testing.assert_allclose(value, ces[k] + kls[k], rtol=1e-6)


# ---------------------------------------------------------------------------- cohort


@functools.lru_cache(maxsize=None)
def _cohort_run():
  """A resnet8 + wrn_16_1 cohort: its variables, and its train-mode outputs on 2 views."""
  model = models.get("resnet8+wrn_16_1", num_classes=CLASSES)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 2, 32, 32, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), x[0], train=False)
  out, mutated = model.apply(variables, x, train=True, mutable=["batch_stats"])
  return model, variables, x, out, mutated


def test_cohort_members_are_normal_models():
  """Each member's variables are the tree of the model alone; its outputs (and BN updates) equal
  the model applied alone to its view; the ensemble is log mean softmax."""
  _, variables, x, out, mutated = _cohort_run()
  assert set(variables["params"]) == {"member0", "member1"}
  for k, arch in enumerate(("resnet8", "wrn_16_1")):
    alone = models.get(arch, num_classes=CLASSES)
    shapes = jax.eval_shape(functools.partial(alone.init, train=False), jax.random.key(0), x[0])
    member = {c: variables[c][f"member{k}"] for c in ("params", "batch_stats")}
    assert jax.tree.structure(shapes) == jax.tree.structure(member)
    assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(lambda a: a.shape, member)
    ref_out, ref_mut = alone.apply(member, x[k], train=True, mutable=["batch_stats"])
    np.testing.assert_array_equal(out[1]["members"][k][0], ref_out[0])
    for a, b in zip(jax.tree.leaves(out[1]["members"][k][1]), jax.tree.leaves(ref_out[1])):
      np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(mutated["batch_stats"][f"member{k}"]),
                    jax.tree.leaves(ref_mut["batch_stats"])):
      np.testing.assert_array_equal(a, b)
  logits = [m[0] for m in out[1]["members"]]
  expected = np.log(np.mean([np.asarray(jax.nn.softmax(z)) for z in logits], axis=0))
  np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(cohort.ensemble(logits, "logits"), (logits[0] + logits[1]) / 2, rtol=1e-6)


def test_cohort_single_batch_and_independent_init():
  """A (B, H, W, C) batch reaches every member; same-architecture members start differently."""
  model, variables, x, _, _ = _cohort_run()
  out = model.apply(variables, x[0], train=False)
  alone = models.get("resnet8", num_classes=CLASSES).apply(
      {c: variables[c]["member0"] for c in ("params", "batch_stats")}, x[0], train=False)
  np.testing.assert_array_equal(out[1]["members"][0][0], alone[0])
  with pytest.raises(ValueError, match="one view per member"):
    model.apply(variables, jnp.stack([x[0]] * 3), train=False)
  twin = models.get("resnet8+resnet8", num_classes=CLASSES)
  p = twin.init(jax.random.key(0), x[0][:1], train=False)["params"]
  assert not np.array_equal(p["member0"]["conv1"]["kernel"], p["member1"]["conv1"]["kernel"])


def test_cohort_names():
  """'A+B' builds a cohort of registered models; names() lists registered models only."""
  assert models.exists("resnet32+resnet32") and models.exists("resnet8")
  assert not models.exists("resnet32+nonet") and not models.exists("nonet")
  assert not any("+" in n for n in models.names())
  with pytest.raises(UserError, match="nonet"):
    models.get("resnet32+nonet")
  assert cohort.name_from_arg("resnet32, wrn_16_2") == "resnet32+wrn_16_2"
  for bad in ("resnet32", "resnet32,nonet"):
    with pytest.raises(UserError):
      cohort.name_from_arg(bad)


# ---------------------------------------------------------------------------- configs


def _load_config(name, arg):
  module = recipes.load_config_module(os.path.join(ROOT, "configs", f"{name}_cifar.py"))
  return module, module.get_config(arg)


@pytest.mark.parametrize("name", ["afd", "dml", "kdcl"])
def test_configs(name):
  """`configs/<method>_cifar.py:NET1,NET2[,NET3]`: the cohort, the online recipe, KDCL's views."""
  module, c = _load_config(name, "resnet8,wrn_16_1,resnet8")
  assert (c.method, c.model, c.teacher.arch) == (name, "resnet8+wrn_16_1+resnet8", "")
  assert (c.epochs, c.batch_size, c.optim.lr, tuple(c.optim.lr_milestones)) == (300, 128, 0.1, (150, 225))
  method = methods.get(name, c)
  assert method.views == (3 if name == "kdcl" else 1)
  assert not method.needs_teacher
  with pytest.raises(UserError):
    module.get_config("resnet8")
  if name == "afd":
    assert tables.REPORTED["afd_cifar"] == {"resnet32,resnet32": 74.03}
    assert c.optim.weight_decay == 1e-4 and c.afd.adv_lr == 2e-5


# ----------------------------------------------------------------------- end to end


ENV = parity.cli_env(KDJAX_MOCK_EXAMPLES="64")
E2E = {"afd2": ("afd", "resnet8,resnet8"), "afd3": ("afd", "resnet8,resnet8,resnet8"),
       "dml": ("dml", "resnet8,resnet8"), "kdcl": ("kdcl", "resnet8,resnet8")}


def _cli(workdir, name, arg, epochs):
  return [sys.executable, os.path.join(ROOT, "tests", "mocked_main.py"),
          f"--config=configs/{name}_cifar.py:{arg}", f"--config.epochs={epochs}",
          "--config.batch_size=16", "--config.eval_batch_size=32", "--config.progress_bar=False",
          f"--workdir={workdir}"]


@pytest.mark.long
@pytest.mark.parametrize("case", sorted(E2E))
def test_end_to_end_checkpoint_resume_results(tmp_path, case):
  """One tiny epoch on mock CIFAR through the CLI: results.json has each member's and the
  ensemble's top-1 and every member exports as a model dir. AFD's pair (two optimizers, the
  discriminators in the state) then resumes from its checkpoint for a second epoch; the other
  cases restore only the same cohort tree and one optimizer, so one run each keeps the test short."""
  name, arg = E2E[case]
  workdir = str(tmp_path / case)
  epochs = (1, 2) if case == "afd2" else (1,)
  for n in epochs:
    done = subprocess.run(_cli(workdir, name, arg, n), cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
  if len(epochs) > 1:
    assert "resumed from" in done.stdout and "after epoch 1" in done.stdout, done.stdout[-2000:]
  results = json.load(open(os.path.join(workdir, "results.json")))
  num = len(arg.split(","))
  assert results["method"] == name and results["epochs"] == epochs[-1]
  assert results["student"] == arg.replace(",", "+")
  members = results["members"]
  assert [m["arch"] for m in members] == arg.split(",")
  for m in members:
    assert 0.0 <= m["last_top1"] <= 100.0 and 0.0 <= m["best_top1"] <= 100.0
    assert checkpoint.is_model_dir(m["model_dir"])
    assert checkpoint.load_model(m["model_dir"])[1]["arch"] == m["arch"]  # a plain zoo model
  assert 0.0 <= results["best_top1"] <= 100.0 and 0.0 <= results["last_top1"] <= 100.0
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert len(records) == epochs[-1]  # the resumed run appended to, not restarted, the history
  assert all(len(r["members_test_top1"]) == num for r in records)
  assert [m["last_top1"] for m in members] == records[-1]["members_test_top1"]
  if name == "afd":  # the adversarial pass ran, with finite G and D losses
    assert all(np.isfinite(r["train_loss_adv_d"]) and np.isfinite(r["train_loss_adv_g"])
               for r in records)
