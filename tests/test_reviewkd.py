"""ReviewKD: ABF + HCL parity with PyTorch, the release's tables, warmup, config, two real train steps."""
import functools
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdjax import data, methods, models, ops, recipes, train
from kdjax.errors import UserError
from kdjax.methods import reviewkd
from experiments.repro import tables
from tests.torch_reference import reviewkd as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
reviewkd_cifar = recipes.load_config_module(os.path.join(ROOT, "configs", "reviewkd_cifar.py"))


# float32: both frameworks sit ~1e-5 (norm-wise) from a float64 evaluation of the same graph
# (large conv/BN reductions; the 1x1 level's BN at batch 4 cancels heavily), so elementwise or even
# norm-wise 1e-5 between them is at the noise floor: the loss is checked to 1e-5 and gradients
# norm-wise to 5e-5. float64 on both sides checks that the two compute the same function.
TOLERANCES = {"float32": dict(loss=1e-5, grad=5e-5), "float64": dict(loss=1e-12, grad=1e-9)}


def _assert_close(actual, expected, tol):
  """Per-tensor ||a - e|| / ||e|| <= tol, and every element within 4 tol of max|e|."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  norm = max(float(np.linalg.norm(expected)), 1e-30)
  err = float(np.linalg.norm(actual - expected)) / norm
  assert err <= tol, f"norm-wise relative error {err:.2e} > {tol:.0e}"
  np.testing.assert_allclose(actual, expected, rtol=0, atol=4 * tol * float(np.max(np.abs(expected))))


@functools.lru_cache(maxsize=None)
def _output_shapes(arch: str, batch: int):
  """`(logits, features)` as ShapeDtypeStructs of the real model (no compute)."""
  model = models.get(arch, num_classes=100)
  x = jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False), x)[0]


def _random_output(arch: str, batch: int, seed: int):
  """Random arrays of `arch`'s output shapes: post-ReLU `feats`/`pooled` >= 0, signed `preact_feats`."""
  rng = np.random.default_rng(seed)
  logits, feats = _output_shapes(arch, batch)
  normal = lambda s: rng.standard_normal(s.shape).astype(np.float32)
  return (normal(logits), {"feats": tuple(np.maximum(normal(f), 0) for f in feats["feats"]),
                           "preact_feats": tuple(normal(f) for f in feats["preact_feats"]),
                           "pooled": np.abs(normal(feats["pooled"]))})


def _progress(epoch):
  return methods.Progress(step=jnp.int32(0), epoch=jnp.int32(epoch))


def _config(**fields):
  c = recipes.base_config()
  for k, v in fields.items():
    c.reviewkd[k] = v
  return c


def _random_variables(method, s_out, t_out, seed):
  """ABF (params, state) of `method.init`'s structure filled with random values, without compiling init.

  Kernels ~ U(+-sqrt(3 / fan_in)) like the real init; BN scales / running variances 1 + 0.1|N|,
  biases / running means 0.1 N, so every leaf is off its trivial init and the copy is really tested.
  """
  shapes = jax.eval_shape(functools.partial(method.init, data_info={}), jax.random.key(0), s_out, t_out)
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = path[-1].key
    if name == "kernel":
      bound = np.sqrt(3.0 / np.prod(s.shape[:-1]))
      return rng.uniform(-bound, bound, s.shape).astype(np.float32)
    if name in ("scale", "var"):
      return (1.0 + 0.1 * np.abs(rng.standard_normal(s.shape))).astype(np.float32)
    return (0.1 * rng.standard_normal(s.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


# ----------------------------------------------------------------------------- parity with PyTorch


def _cast(tree, dtype):
  return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)


# Both pairs in float32; float64 (the exact-equality check) on the cross-family pair only, which
# exercises every path (fusion, residual upsampling, resize to the teacher) in the least time.
@pytest.mark.parametrize("teacher,student,dtype", [("resnet32x4", "resnet8x4", "float32"),
                                                   ("resnet32x4", "ShuffleV2", "float32"),
                                                   ("resnet32x4", "ShuffleV2", "float64")])
def test_loss_gradients_and_bn_stats_match_torch(teacher, student, dtype):
  """Full method loss (CE + λ·warmup·HCL) and its gradients, same ABF weights and features as PyTorch."""
  batch, weight, epoch = 4, 5.0, 10  # 0-indexed epoch 10 of 20: factor 0.5
  tol = TOLERANCES[dtype]
  method = methods.get("reviewkd", _config(weight=weight))
  s_out, t_out = _random_output(student, batch, 0), _random_output(teacher, batch, 1)
  labels = np.arange(batch, dtype=np.int32)
  params, state = _random_variables(method, s_out, t_out, 2)

  def loss_fn(params, s_feats, s_pooled, s_logits, t_feats, t_pooled):
    # Distinct student preacts and teacher post-ReLU feats: using the wrong tap would fail.
    s = (s_logits, {"feats": s_feats, "preact_feats": tuple(-f for f in s_feats), "pooled": s_pooled})
    t = (t_out[0], {"feats": t_out[1]["feats"], "preact_feats": t_feats, "pooled": t_pooled})
    loss, metrics, new_state = method.loss(params, state_x, s, t, {"label": labels}, _progress(epoch))
    return loss, (metrics, new_state)

  args = (params, s_out[1]["feats"], s_out[1]["pooled"], s_out[0], t_out[1]["preact_feats"], t_out[1]["pooled"])
  with jax.enable_x64(dtype == "float64"):
    args, state_x = _cast(args, dtype), _cast(state, dtype)
    (loss, (metrics, new_state)), grads = jax.device_get(jax.jit(jax.value_and_grad(
        loss_fn, argnums=tuple(range(6)), has_aux=True))(*args))

  tdtype = getattr(torch, dtype)
  plan = reviewkd.make_plan(reviewkd.student_levels(s_out), reviewkd.teacher_levels(t_out), 512)
  head = ref.ReviewHead(plan.in_channels, plan.out_channels, plan.out_shapes, plan.mid_channels)
  ref.load_flax_variables(head, params, state["batch_stats"])
  head.to(tdtype).train()
  leaf = lambda a: a.to(tdtype).requires_grad_()
  s_feats = [leaf(ref.to_nchw(f)) for f in s_out[1]["feats"][1:]]
  s_pooled, s_logits = leaf(torch.tensor(s_out[1]["pooled"])), leaf(torch.tensor(s_out[0]))
  t_levels = [ref.to_nchw(f).to(tdtype) for f in t_out[1]["preact_feats"][1:]]
  t_levels.append(torch.tensor(t_out[1]["pooled"]).to(tdtype)[:, :, None, None])
  review = ref.hcl(head(s_feats + [s_pooled[:, :, None, None]]), t_levels)
  torch_loss = F.cross_entropy(s_logits, torch.tensor(labels, dtype=torch.long)) + weight * 0.5 * review
  torch_loss.backward()

  _assert_close(loss, torch_loss.item(), tol["loss"])
  _assert_close(metrics["loss_reviewkd"], review.item(), tol["loss"])
  assert float(metrics["reviewkd_warmup"]) == 0.5
  close = lambda a, e: _assert_close(a, e, tol["grad"])
  jax.tree.map(close, grads[0], ref.grads_as_flax(head))
  for g, t in zip(grads[1][1:], s_feats):
    close(g, t.grad.numpy().transpose(0, 2, 3, 1))
  assert not np.any(grads[1][0])  # the stem is not a review level
  close(grads[2], s_pooled.grad.numpy())
  close(grads[3], s_logits.grad.numpy())
  # The teacher is a target only.
  assert not any(np.any(g) for g in jax.tree.leaves((grads[4], grads[5])))
  # ABF BatchNorms ran in train mode and updated their running statistics like PyTorch's.
  jax.tree.map(close, new_state["batch_stats"], ref.running_stats_as_flax(head))


@pytest.mark.parametrize("sizes", [(32, 16, 8, 1), (8, 7, 4, 2, 1), (5, 3)])
def test_hcl_matches_torch(sizes):
  """HCL alone, value and gradient, including 4x4/2x2 maps and non-divisible adaptive pools (7x7, 5x5, 3x3)."""
  rng = np.random.default_rng(len(sizes))
  ys = [rng.standard_normal((3, h, h, 6)).astype(np.float32) for h in sizes]
  ts = [rng.standard_normal((3, h, h, 6)).astype(np.float32) for h in sizes]
  value, grads = jax.jit(jax.value_and_grad(reviewkd.hcl_loss))(ys, ts)
  ys_t = [ref.to_nchw(y).requires_grad_() for y in ys]
  expected = ref.hcl(ys_t, [ref.to_nchw(t) for t in ts])
  expected.backward()
  _assert_close(value, expected.item(), 1e-6)
  for g, y in zip(grads, ys_t):
    _assert_close(g, y.grad.numpy().transpose(0, 2, 3, 1), 1e-6)


def test_hcl_weights_halve_per_used_level_as_the_release():
  assert reviewkd.hcl_weights(32) == ((None, 1.0), (4, 0.5), (2, 0.25), (1, 0.125))
  assert reviewkd.hcl_weights(8) == ((None, 1.0), (4, 0.5), (2, 0.25), (1, 0.125))
  assert reviewkd.hcl_weights(4) == ((None, 1.0), (2, 0.5), (1, 0.25))
  assert reviewkd.hcl_weights(2) == ((None, 1.0), (1, 0.5))
  assert reviewkd.hcl_weights(1) == ((None, 1.0),)
  # A 4x4 map whose only error is a constant offset d: every term is d^2, normalised back to d^2.
  y, t = np.full((1, 4, 4, 2), 3.0, np.float32), np.zeros((1, 4, 4, 2), np.float32)
  assert float(reviewkd.hcl_level(y, t)) == pytest.approx(9.0)
  # Error only in the full-resolution term (zero-mean checkerboard): 1 / 1.75 of it on a 4x4 map.
  y = np.indices((4, 4)).sum(0)[None, :, :, None] % 2 * 2.0 - 1.0
  assert float(reviewkd.hcl_level(y.astype(np.float32), np.zeros_like(y, np.float32))) == pytest.approx(1 / 1.75)


def test_nearest_resize_matches_torch():
  x = np.random.default_rng(0).standard_normal((2, 5, 6, 3)).astype(np.float32)
  # 2x / 3x repeats, 2x / 3x strided slices, non-integer ratios (gathers), identity.
  for size in [(10, 12), (15, 2), (4, 4), (7, 3), (5, 6)]:
    expected = F.interpolate(ref.to_nchw(x), size=size, mode="nearest").numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(ops.nearest_resize(jnp.asarray(x), size), expected)


# ----------------------------------------------------------------------------- geometry, init, warmup


# The release's `build_review_kd` (in_channels, shapes, out_channels, out_shapes, as it writes them),
# VGG/MobileNetV2 rows included although its CIFAR code cannot build those students.
RELEASE_TABLES = {
    "resnet32x4,resnet8x4": ([64, 128, 256, 256], [1, 8, 16, 32], [64, 128, 256, 256], [1, 8, 16, 32]),
    "resnet56,resnet20": ([16, 32, 64, 64], [1, 8, 16, 32], [16, 32, 64, 64], [1, 8, 16, 32]),
    "resnet110,resnet32": ([16, 32, 64, 64], [1, 8, 16, 32], [16, 32, 64, 64], [1, 8, 16, 32]),
    "wrn_40_2,wrn_16_2": ([32, 64, 128, 128], [1, 8, 16, 32], [32, 64, 128, 128], [1, 8, 16, 32]),
    "wrn_40_2,wrn_40_1": ([16, 32, 64, 64], [1, 8, 16, 32], [32, 64, 128, 128], [1, 8, 16, 32]),
    "wrn_40_2,ShuffleV1": ([240, 480, 960, 960], [1, 4, 8, 16], [32, 64, 128, 128], [1, 8, 16, 32]),
    "resnet32x4,ShuffleV1": ([240, 480, 960, 960], [1, 4, 8, 16], [64, 128, 256, 256], [1, 8, 16, 32]),
    "resnet32x4,ShuffleV2": ([116, 232, 464, 1024], [1, 4, 8, 16], [64, 128, 256, 256], [1, 8, 16, 32]),
    "vgg13,vgg8": ([128, 256, 512, 512, 512], [1, 4, 4, 8, 16], [128, 256, 512, 512, 512], [1, 4, 4, 8, 16]),
    "vgg13,MobileNetV2": ([12, 16, 48, 160, 1280], [1, 2, 4, 8, 16], [128, 256, 512, 512, 512], [1, 4, 4, 8, 16]),
    "ResNet50,MobileNetV2": ([12, 16, 48, 160, 1280], [1, 2, 4, 8, 16], [256, 512, 1024, 2048, 2048], [1, 4, 8, 16, 32]),
}


def test_config_pairs_are_the_release_tables():
  """Every config pair: shapes derived from the real models equal the release's tables, C_mid = min(512, C_n)."""
  assert set(reviewkd_cifar.PAIRS) == set(RELEASE_TABLES) == set(tables.REPORTED["reviewkd_cifar"])
  for pair, (cin, shapes, cout, out_shapes) in RELEASE_TABLES.items():
    teacher, student = pair.split(",")
    plan = reviewkd.make_plan(jax.eval_shape(reviewkd.student_levels, _output_shapes(student, 2)),
                              jax.eval_shape(reviewkd.teacher_levels, _output_shapes(teacher, 2)), 512)
    # Channels are listed shallow -> deep, shapes deep -> shallow; a shape s means an s x s map.
    assert list(plan.shapes) == [(s, s) for s in shapes[::-1]], pair
    assert list(plan.in_channels) == cin, pair
    assert list(plan.out_channels) == cout, pair
    assert list(plan.out_shapes) == [(s, s) for s in out_shapes[::-1]], pair
    assert plan.mid_channels == min(512, cin[-1]), pair
  # Extra parameters of res32x4 -> res8x4 (the DKD paper's ~1.8M), counted from the real init's tree.
  method = methods.get("reviewkd", _config())
  params, _ = jax.eval_shape(functools.partial(method.init, data_info={}), jax.random.key(0),
                             _output_shapes("resnet8x4", 2), _output_shapes("resnet32x4", 2))
  assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) == 1_808_774


def test_mismatched_stage_counts_are_one_clear_error():
  method = methods.get("reviewkd", _config())
  init = lambda s, t: method.init(jax.random.key(0), s, t, {})
  with pytest.raises(UserError, match="student has 5"):
    jax.eval_shape(init, _output_shapes("MobileNetV2", 2), _output_shapes("resnet8", 2))
  with pytest.raises(UserError, match="needs a teacher"):
    jax.eval_shape(init, _output_shapes("resnet8", 2), None)


def test_abf_tree_mirrors_the_release_and_state_holds_bn_stats():
  method = methods.get("reviewkd", _config())
  s_out = _tiny_output(0, channels=(8, 16, 32, 64), sizes=(8, 8, 4, 2))
  t_out = _tiny_output(1, channels=(8, 32, 64, 128), sizes=(8, 8, 4, 2))
  params, state = jax.eval_shape(functools.partial(method.init, data_info={}), jax.random.key(0), s_out, t_out)
  assert sorted(params) == ["abfs_0", "abfs_1", "abfs_2", "abfs_3"]  # abfs_0 = deepest, as the release
  assert "att_conv" not in params["abfs_0"] and params["abfs_1"]["att_conv"]["kernel"].shape == (1, 1, 128, 2)
  assert params["abfs_3"]["conv2"]["0"]["kernel"].shape == (3, 3, 64, 32)  # shallowest: C_mid 64 -> 32
  assert params["abfs_2"]["conv1"]["0"]["kernel"].shape == (1, 1, 32, 64)
  assert params["abfs_0"]["conv1"]["0"]["kernel"].shape == (1, 1, 64, 64)  # pooled level
  assert jax.tree.structure(state["batch_stats"]) == jax.tree.structure(
      {k: {c: {"1": {"mean": 0, "var": 0}} for c in ("conv1", "conv2")} for k in params})
  small = jax.eval_shape(functools.partial(methods.get("reviewkd", _config(max_mid_channel=32)).init,
                                           data_info={}), jax.random.key(0), s_out, t_out)[0]
  assert small["abfs_0"]["conv1"]["0"]["kernel"].shape == (1, 1, 64, 32)


def _tiny_output(seed, channels=(3, 4, 8), sizes=(4, 4, 2)):
  """A synthetic `(logits, features)`: stem + stages of `channels` at `sizes`, pooled = last channels."""
  rng = np.random.default_rng(seed)
  feats = tuple(rng.standard_normal((2, h, h, c)).astype(np.float32) for c, h in zip(channels, sizes))
  return (rng.standard_normal((2, 10)).astype(np.float32),
          {"feats": feats, "preact_feats": feats,
           "pooled": np.abs(rng.standard_normal((2, channels[-1]))).astype(np.float32)})


def test_warmup_factor_at_epochs_0_1_19_20():
  """0-indexed epochs as in Progress: base 0 (release) gives 0 in the first epoch, base 1 (mdistiller) 1/20."""
  expected = {0: (0.0, 0.05, 0.95, 1.0), 1: (0.05, 0.1, 1.0, 1.0)}
  method = {b: methods.get("reviewkd", _config(weight=2.0, warmup_epoch_base=b)) for b in expected}
  s, t = _tiny_output(0), _tiny_output(1)
  params, state = _random_variables(method[0], s, t, 0)

  def losses(epoch):
    return {b: m.loss(params, state, s, t, {"label": np.array([1, 2])}, _progress(epoch))[:2]
            for b, m in method.items()}

  # One compile for both bases and all four epochs.
  out = jax.device_get(jax.jit(jax.vmap(losses))(jnp.array([0, 1, 19, 20])))
  for b, factors in expected.items():
    loss, metrics = out[b]
    np.testing.assert_allclose(metrics["reviewkd_warmup"], factors, rtol=1e-6)
    assert np.all(metrics["loss_reviewkd"] > 0)
    np.testing.assert_allclose(loss, metrics["loss_ce"] + 2.0 * np.asarray(factors) * metrics["loss_reviewkd"],
                               rtol=1e-6)
    for epoch, factor in zip((0, 1, 19, 20), factors):  # the shared helper agrees
      assert float(methods.base.warmup_factor(_progress(epoch), 20.0, b)) == pytest.approx(factor)


def test_config_file():
  c = reviewkd_cifar.get_config()
  assert (c.method, c.teacher.arch, c.model, c.reviewkd.weight) == ("reviewkd", "resnet32x4", "resnet8x4", 5.0)
  assert (c.batch_size, c.optim.lr, c.optim.nesterov, c.reviewkd.warmup_epoch_base) == (64, 0.05, False, 0)
  assert reviewkd_cifar.get_config("resnet32x4,ShuffleV2").reviewkd.weight == 8.0
  assert reviewkd_cifar.get_config("resnet56,resnet20").reviewkd.weight == 0.6
  o = reviewkd_cifar.get_config("resnet32x4,ShuffleV2,official")
  assert (o.batch_size, o.optim.lr, o.optim.nesterov, tuple(o.optim.lr_milestones)) == (128, 0.02, True, (151, 181, 211))
  assert reviewkd_cifar.get_config("resnet32x4,resnet8x4,official").optim.lr == 0.1
  assert (o.reviewkd.teacher_bn_mode, c.reviewkd.teacher_bn_mode) == ("batch_stats", "eval")
  assert methods.get("reviewkd", o).teacher_bn_mode == "batch_stats"
  with pytest.raises(UserError, match="unknown teacher,student pair"):
    reviewkd_cifar.get_config("resnet32x4,resnet20")
  with pytest.raises(UserError, match="unknown recipe"):
    reviewkd_cifar.get_config("resnet32x4,resnet8x4,fast")


# ----------------------------------------------------------------------------- real train steps


def _random_teacher_variables(model, seed):
  """Teacher variables of `model.init`'s structure without compiling init (a trained one is not needed)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = path[-1].key
    if name == "kernel":
      return (rng.standard_normal(s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))).astype(np.float32)
    return (np.ones if name in ("scale", "var") else np.zeros)(s.shape, np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


# The cross-family step (ShuffleV2 student, resized levels) costs ~1 CPU-minute to compile, so it
# runs only with KDJAX_SLOW_TESTS=1; the resize paths are covered by the jitted parity test above.
@pytest.mark.parametrize("teacher,student", [
    ("resnet8x4", "resnet8"),
    pytest.param("resnet8", "ShuffleV2", marks=pytest.mark.skipif(
        not os.environ.get("KDJAX_SLOW_TESTS"), reason="slow on CPU; set KDJAX_SLOW_TESTS=1")),
])
def test_two_train_steps_update_abf_and_its_bn_stats(teacher, student):
  config = recipes.base_config()
  config.method, config.model, config.teacher.arch = "reviewkd", student, teacher
  config.batch_size = 16
  config.reviewkd.warmup_epochs = 0.0  # factor 1 from step 0, so the ABFs get a feature-loss gradient
  dataset = data.load("digits")
  teacher_model = models.get(teacher, num_classes=dataset.num_classes)
  tvars = _random_teacher_variables(teacher_model, 1)
  run = train.build(config, dataset, train.make_mesh(jax.devices()[:1]),
                    [train.Teacher(teacher_model, tvars)])
  state = run.state
  # The step donates its state: keep host copies of what is compared.
  abf0, stats0 = jax.device_get((state.params["method"], state.method_state["batch_stats"]))
  _check_release_init(abf0)
  images, labels = jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels)
  perm = run.permute(jax.random.key(0))
  lr, wd = float(run.lr_fn(0)), config.optim.weight_decay
  state, m1 = run.train_step(state, run.teacher_vars, images, labels, perm)
  abf1, stats1 = jax.device_get((state.params["method"], state.method_state["batch_stats"]))
  state, m2 = run.train_step(state, run.teacher_vars, images, labels, perm)
  for m in (m1, m2):
    assert np.isfinite(float(m["loss"])) and float(m["loss_reviewkd"]) > 0
    assert float(m["reviewkd_warmup"]) == 1.0
  assert int(state.nonfinite_step) == -1
  # First SGD step: p1 = p0 - lr (g + wd p0); the feature loss must contribute g != 0 to the ABFs.
  moved = jax.tree.map(lambda p0, p1: float(np.max(np.abs(p1 - p0 * (1 - lr * wd)))), abf0, abf1)
  assert all(v > 0 for v in jax.tree.leaves(moved)), moved
  assert all(np.any(a != b) for a, b in zip(jax.tree.leaves(stats0), jax.tree.leaves(stats1)))
  abf2 = jax.device_get(state.params["method"])
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(abf1), jax.tree.leaves(abf2)))


def _check_release_init(params):
  """Bias-free convs ~ kaiming_uniform(a=1) = U(+-sqrt(3/fan_in)); the fusion conv ~ PyTorch's default."""
  for abf in params.values():
    for name in ("conv1", "conv2"):
      kernel = abf[name]["0"]["kernel"]
      bound = np.sqrt(3.0 / np.prod(kernel.shape[:-1]))
      assert np.max(np.abs(kernel)) <= bound * (1 + 1e-6)
      if kernel.size > 20000:
        assert np.std(kernel) == pytest.approx(bound / np.sqrt(3), rel=0.03)
      np.testing.assert_array_equal(abf[name]["1"]["scale"], 1.0)
    if "att_conv" in abf:
      fan_in = abf["att_conv"]["kernel"].shape[2]
      assert np.max(np.abs(abf["att_conv"]["kernel"])) <= (1 + 1e-6) / np.sqrt(fan_in)
      assert np.max(np.abs(abf["att_conv"]["bias"])) <= (1 + 1e-6) / np.sqrt(fan_in)


# ----------------------------------------------------------------------------- ablation switches


def _fill_by_path(shapes, seed):
  """Variables of `shapes` with each leaf drawn from its own path-seeded stream, so that the leaves
  two ablations share get the same values whatever else their trees hold."""

  def fill(path, s):
    key = "/".join(str(getattr(k, "key", k)) for k in path)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    name = path[-1].key
    if name == "kernel":
      bound = np.sqrt(3.0 / np.prod(s.shape[:-1]))
      return rng.uniform(-bound, bound, s.shape).astype(np.float32)
    if name in ("scale", "var"):
      return (1.0 + 0.1 * np.abs(rng.standard_normal(s.shape))).astype(np.float32)
    return (0.1 * rng.standard_normal(s.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _ablation_loss(overrides, s_out, t_out):
  """(ABF params, loss metrics) of the method with `overrides` of config.reviewkd, on fixed inputs."""
  c = recipes.base_config()
  for key, value in overrides.items():
    node, field = key.split(".")
    c[node][field] = value
  method = methods.get("reviewkd", c)
  params, state = _fill_by_path(jax.eval_shape(functools.partial(method.init, data_info={}),
                                               jax.random.key(0), s_out, t_out), 3)
  _, metrics, _ = jax.jit(method.loss)(params, state, s_out, t_out, {"label": np.array([1, 2])},
                                       _progress(30))
  return params, jax.device_get(metrics)


def test_every_ablation_changes_the_loss_and_the_default_is_the_release():
  """Each ABLATIONS entry computes another loss on the same features and the same shared weights;
  the defaults (and `release`, and every switch spelt out at its default) are the release's loss."""
  # Heights 8/4/2 (+ the pooled 1x1): every HCL pyramid level is used somewhere; teacher channels
  # differ from C_mid = 64 at the shallow levels, so `feed='output'` needs its projection.
  s_out = _tiny_output(0, channels=(8, 16, 32, 64), sizes=(8, 8, 4, 2))
  t_out = _tiny_output(1, channels=(8, 32, 64, 128), sizes=(8, 8, 4, 2))
  release_params, release = _ablation_loss({}, s_out, t_out)
  spelt_out = {"reviewkd.abf": True, "reviewkd.feed": "residual", "reviewkd.hcl_levels": (0, 4, 2, 1),
               "reviewkd.hcl_weights": (), "reviewkd.review": True}
  assert reviewkd_cifar.ABLATIONS[reviewkd_cifar.ABLATION_BASELINE] == {}
  assert tables.ABLATION_ROWS["reviewkd_cifar"][0] == reviewkd_cifar.ABLATION_BASELINE
  assert float(_ablation_loss(spelt_out, s_out, t_out)[1]["loss_reviewkd"]) == float(release["loss_reviewkd"])
  assert (reviewkd_cifar.get_config("resnet32x4,resnet8x4,release").to_dict()
          == reviewkd_cifar.get_config("resnet32x4,resnet8x4").to_dict())
  assert set(reviewkd_cifar.ABLATIONS) == {"release", "no_abf", "feed_output", "hcl_full_4",
                                           "hcl_equal_weights", "no_hcl", "no_review", "rlf_only", "none"}
  seen = {float(release["loss_reviewkd"])}
  for name, overrides in reviewkd_cifar.ABLATIONS.items():
    if name == reviewkd_cifar.ABLATION_BASELINE:
      continue
    params, metrics = _ablation_loss(overrides, s_out, t_out)
    loss = float(metrics["loss_reviewkd"])
    assert np.isfinite(loss) and loss > 0, name
    assert abs(loss - float(release["loss_reviewkd"])) > 1e-4 * float(release["loss_reviewkd"]), name
    assert loss not in seen, name  # and no two ablations compute the same thing
    seen.add(loss)
    # The module trees: attention only with ABF and review; the projection only for feed='output'.
    fuses = overrides.get("reviewkd.abf", True) and overrides.get("reviewkd.review", True)
    assert ("att_conv" in params["abfs_1"]) == fuses, name
    assert any("res_proj" in p for p in params.values()) == (overrides.get("reviewkd.feed") == "output"), name
    if name in ("hcl_full_4", "hcl_equal_weights", "no_hcl"):  # HCL only: the same modules
      assert jax.tree.structure(params) == jax.tree.structure(release_params), name
  # feed='output': teacher channels 32, 64, 128 (+ pooled 128) vs C_mid 64. The deepest level fuses
  # nothing; the 128-channel outputs of the two deepest levels are projected to 64 where they are
  # fused (abfs_1, abfs_2); the 64-channel one meets abfs_3 directly.
  params, _ = _ablation_loss({"reviewkd.feed": "output"}, s_out, t_out)
  assert "res_proj" not in params["abfs_0"] and "res_proj" not in params["abfs_3"]
  assert params["abfs_1"]["res_proj"]["kernel"].shape == params["abfs_2"]["res_proj"]["kernel"].shape == (1, 1, 128, 64)


def test_no_review_no_abf_no_hcl_is_per_level_connectors_with_mse():
  """`none`: each student level through its own 1x1 conv+BN, 3x3 conv+BN, plain MSE to its teacher level."""
  s_out = _tiny_output(0, channels=(8, 16, 32, 64), sizes=(8, 8, 4, 2))
  t_out = _tiny_output(1, channels=(8, 32, 64, 128), sizes=(8, 8, 4, 2))
  params, metrics = _ablation_loss(reviewkd_cifar.ABLATIONS["none"], s_out, t_out)
  s_levels, t_levels = reviewkd.student_levels(s_out), reviewkd.teacher_levels(t_out)
  expected = 0.0
  for k, i in enumerate(reversed(range(len(s_levels)))):
    abf = reviewkd.ABF(64, t_levels[i].shape[-1], fuse=False)
    y, _ = abf.apply({"params": params[f"abfs_{k}"],
                      "batch_stats": jax.tree.map(np.zeros_like, params[f"abfs_{k}"])},
                     s_levels[i], None, t_levels[i].shape[1:3], True, mutable=["batch_stats"])[0]
    expected += float(np.mean((np.asarray(y) - t_levels[i]) ** 2))
  np.testing.assert_allclose(float(metrics["loss_reviewkd"]), expected, rtol=1e-5)


def test_hcl_levels_and_weights():
  """Custom pyramids: fixed weights per listed level, normalised over the used ones; (0,) is plain MSE."""
  rng = np.random.default_rng(0)
  y, t = rng.standard_normal((2, 8, 8, 3)).astype(np.float32), rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
  mse = lambda a, b: float(np.mean((np.asarray(a) - np.asarray(b)) ** 2))
  pool = lambda a, k: np.asarray(ops.adaptive_avg_pool(jnp.asarray(a), k))
  assert float(reviewkd.hcl_level(y, t, (0,))) == pytest.approx(mse(y, t), rel=1e-6)
  assert reviewkd.hcl_weights(8, (0, 4)) == ((None, 1.0), (4, 0.5))
  assert reviewkd.hcl_weights(4, (0, 4, 2, 1), (1.0, 3.0, 2.0, 1.0)) == ((None, 1.0), (2, 2.0), (1, 1.0))
  expected = (1.0 * mse(y, t) + 3.0 * mse(pool(y, 4), pool(t, 4)) + 2.0 * mse(pool(y, 2), pool(t, 2))) / 6.0
  got = float(reviewkd.hcl_level(y, t, (0, 4, 2), (1.0, 3.0, 2.0)))
  assert got == pytest.approx(expected, rel=1e-6)
  for bad in [dict(hcl_levels=(4, 2, 1)), dict(hcl_levels=(0, 4, 4)), dict(hcl_weights=(1.0, 0.5)),
              dict(feed="fused")]:
    with pytest.raises(UserError, match="config.reviewkd"):
      methods.get("reviewkd", _config(**bad))
