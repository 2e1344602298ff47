"""Tests of the CIFAR model zoo: exact parameter counts, PyTorch key layout, feature taps, forwards.

Shapes and counts use `jax.eval_shape` (no compilation); only three small models run for real.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from kdjax import models
from kdjax.models import layers

# (trainable parameters, PyTorch state_dict entries) for 100 classes, from
# enumerating mdistiller's `models/cifar/` definitions (the published teachers' state dicts).
PARAM_COUNTS = {
    "resnet8": (83_892, 56),
    "resnet14": (181_108, 92),
    "resnet20": (278_324, 128),
    "resnet32": (472_756, 200),
    "resnet44": (667_188, 272),
    "resnet56": (861_620, 344),
    "resnet110": (1_736_564, 668),
    "resnet8x4": (1_233_540, 62),
    "resnet32x4": (7_433_860, 206),
    "ResNet50": (23_705_252, 320),
    "wrn_16_1": (180_916, 82),
    "wrn_16_2": (703_284, 83),
    "wrn_40_1": (569_780, 226),
    "wrn_40_2": (2_255_156, 227),
    "vgg8": (3_965_028, 37),
    "vgg11": (9_277_284, 58),
    "vgg13": (9_462_180, 72),
    "vgg16": (14_774_436, 93),
    "vgg19": (20_086_692, 114),
    "MobileNetV2": (812_836, 320),
    "ShuffleV1": (949_258, 296),
    "ShuffleV2": (1_355_528, 338),
}

# Width of the vector that feeds each family's classifier.
POOLED_WIDTH = {"resnet8x4": 256, "resnet32x4": 256, "ResNet50": 2048, "wrn_16_2": 128, "wrn_40_2": 128,
                "MobileNetV2": 1280, "ShuffleV1": 960, "ShuffleV2": 1024}

INPUT_SHAPE = (2, 32, 32, 3)


@functools.cache
def abstract_init(name: str):
  """`((logits, features), variables)` of `name` as ShapeDtypeStructs (no compilation)."""
  model = models.get(name, num_classes=100)
  return jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros(INPUT_SHAPE, jnp.float32), train=False))


# Models outside the published CIFAR zoo (no published counts to pin).
EXTRA_MODELS = ("simple_cnn_student", "simple_cnn_teacher", "imagenet_resnet18", "imagenet_resnet34",
                "imagenet_resnet50", "imagenet_mobilenetv1")


def test_registry_matches_table():
  assert models.names() == sorted([*PARAM_COUNTS, *EXTRA_MODELS])


@pytest.mark.parametrize("name", [n for n in EXTRA_MODELS if n.startswith("simple_cnn")])
def test_simple_cnns(name):
  """The tiny-CNN study's models: 10-way logits, two conv stages, dropout only in the teacher."""
  model = models.get(name, num_classes=10)
  x = jnp.ones((4, 32, 32, 3), jnp.float32)
  variables = model.init(jax.random.key(0), x)
  (logits, feats) = model.apply(variables, x, train=False)
  assert logits.shape == (4, 10) and len(feats["feats"]) == 2
  assert feats["feats"][1].shape == (4, 8, 8, 64 if name.endswith("teacher") else 32)
  out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
  assert np.all(np.isfinite(out[0]))


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_and_state_dict_counts(name):
  _, variables = abstract_init(name)
  assert set(variables) == {"params", "batch_stats"}
  params = jax.tree.leaves(variables["params"])
  n_params = sum(int(np.prod(p.shape)) for p in params)
  stats = flatten_dict(variables["batch_stats"])
  n_bn = sum(1 for path in stats if path[-1] == "mean")
  assert len(stats) == 2 * n_bn  # every BN has exactly mean and var
  # A PyTorch BN adds running_mean, running_var and num_batches_tracked to its weight and bias.
  assert (n_params, len(params) + 3 * n_bn) == PARAM_COUNTS[name]


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_feature_shapes(name):
  (logits, features), variables = abstract_init(name)
  assert logits.shape == (2, 100)
  assert set(features) == {"feats", "preact_feats", "pooled"}
  feats, preacts = features["feats"], features["preact_feats"]
  assert isinstance(feats, tuple) and isinstance(preacts, tuple)
  assert len(feats) == len(preacts) >= 4
  assert [f.shape for f in feats] == [p.shape for p in preacts]
  assert all(f.ndim == 4 and f.shape[0] == 2 for f in feats)
  width = POOLED_WIDTH[name] if name in POOLED_WIDTH else (512 if name.startswith("vgg") else 64)
  assert features["pooled"].shape == (2, width)
  head = variables["params"]
  for key in _head_path(name):
    head = head[key]
  assert head["kernel"].shape == (width, 100) and head["bias"].shape == (100,)


def _head_path(name: str) -> tuple[str, ...]:
  """Where the classifier lives (its PyTorch module path)."""
  if name in ("ResNet50", "ShuffleV1", "ShuffleV2"):
    return ("linear",)
  if name == "MobileNetV2":
    return ("classifier", "0")
  return ("classifier",) if name.startswith("vgg") else ("fc",)


def test_stage_resolutions():
  (_, f), _ = abstract_init("vgg8")  # pool3 is skipped on 32-pixel inputs: block4 runs at 4x4
  assert [x.shape[1] for x in f["feats"]] == [32, 16, 8, 4, 4]
  (_, f), _ = abstract_init("MobileNetV2")  # stride-2 stem
  assert [x.shape[1:] for x in f["feats"]] == [(16, 16, 16), (16, 16, 12), (8, 8, 16), (4, 4, 48),
                                              (2, 2, 160)]
  (_, f), _ = abstract_init("ShuffleV1")
  assert [x.shape[1:] for x in f["feats"]] == [(32, 32, 24), (16, 16, 240), (8, 8, 480), (4, 4, 960)]


def _torch_key(path: tuple[str, ...], collection: str) -> str:
  """Inverse of the generic conversion rule (kernel/scale -> weight, mean/var -> running_*)."""
  last = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
          "var": "running_var"}[path[-1]]
  assert collection == "batch_stats" or path[-1] in ("kernel", "scale", "bias")
  return ".".join(path[:-1] + (last,))


def test_resnet8x4_keys_and_shapes_match_pytorch():
  _, variables = abstract_init("resnet8x4")
  got = {}
  for collection in ("params", "batch_stats"):
    for path, leaf in flatten_dict(variables[collection]).items():
      got[_torch_key(path, collection)] = leaf.shape

  def bn(prefix: str, width: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{k}": (width,) for k in ("weight", "bias", "running_mean", "running_var")}

  want = {"conv1.weight": (3, 3, 3, 32), **bn("bn1", 32), "fc.weight": (256, 100), "fc.bias": (100,)}
  for k, (cin, cout) in enumerate([(32, 64), (64, 128), (128, 256)], start=1):
    blk = f"layer{k}.0"
    want |= {f"{blk}.conv1.weight": (3, 3, cin, cout), f"{blk}.conv2.weight": (3, 3, cout, cout),
             f"{blk}.downsample.0.weight": (1, 1, cin, cout), **bn(f"{blk}.bn1", cout),
             **bn(f"{blk}.bn2", cout), **bn(f"{blk}.downsample.1", cout)}
  assert got == want


def test_other_family_key_paths():
  params = {name: flatten_dict(abstract_init(name)[1]["params"]) for name in
            ("wrn_40_2", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet50")}
  assert ("block1", "layer", "0", "convShortcut", "kernel") in params["wrn_40_2"]  # 16 -> 32
  assert ("block2", "layer", "1", "convShortcut", "kernel") not in params["wrn_40_2"]
  assert ("bn1", "scale") in params["wrn_40_2"] and ("conv1", "kernel") in params["wrn_40_2"]
  assert params["vgg8"][("block0", "0", "bias")].shape == (64,)
  assert params["vgg8"][("block0", "1", "scale")].shape == (64,)
  assert params["MobileNetV2"][("blocks", "2", "0", "conv", "3", "kernel")].shape == (3, 3, 1, 72)
  assert params["MobileNetV2"][("conv1", "0", "kernel")].shape == (3, 3, 3, 16)
  assert params["MobileNetV2"][("classifier", "0", "kernel")].shape == (1280, 100)
  assert params["ShuffleV1"][("layer1", "0", "conv1", "kernel")].shape == (1, 1, 24, 54)  # 1 group
  assert params["ShuffleV1"][("layer1", "1", "conv1", "kernel")].shape == (1, 1, 80, 60)  # 3 groups
  assert params["ShuffleV2"][("layer1", "0", "conv5", "kernel")].shape == (1, 1, 58, 58)
  assert params["ResNet50"][("layer1", "0", "shortcut", "0", "kernel")].shape == (1, 1, 64, 256)


def test_channel_shuffle_matches_pytorch_nchw():
  x = np.arange(2 * 12 * 2 * 2, dtype=np.float32).reshape(2, 12, 2, 2)  # NCHW
  n, c, h, w = x.shape
  want = x.reshape(n, 3, c // 3, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)
  got = np.asarray(layers.channel_shuffle(jnp.asarray(x.transpose(0, 2, 3, 1)), 3))
  np.testing.assert_array_equal(got.transpose(0, 3, 1, 2), want)


def test_avg_pool_counts_padding():
  x = jnp.ones((1, 4, 4, 1))
  y = np.asarray(layers.avg_pool(x, 3, 2, padding=1))[0, :, :, 0]
  # PyTorch AvgPool2d(3, 2, 1): the top-left window covers 4 real pixels but divides by 9.
  np.testing.assert_allclose(y, [[4 / 9, 6 / 9], [6 / 9, 1.0]], rtol=1e-6)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8"])
def test_forward_train_and_eval(name):
  model = models.get(name, num_classes=100)
  # rbg keys: XLA:CPU compiles threefry-based init several times slower.
  variables = jax.jit(lambda k: model.init(k, jnp.zeros(INPUT_SHAPE), train=False))(
      jax.random.key(0, impl="rbg"))
  x = jax.random.normal(jax.random.key(1), INPUT_SHAPE)

  @jax.jit
  def run(v, x):
    train_out, updates = model.apply(v, x, train=True, mutable=["batch_stats"])
    return train_out, updates, model.apply(v, x, train=False)

  (logits, features), updates, (eval_logits, _) = run(variables, x)
  assert logits.shape == eval_logits.shape == (2, 100)
  assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves((logits, features, eval_logits)))
  old, new = variables["batch_stats"], updates["batch_stats"]
  assert jax.tree.structure(old) == jax.tree.structure(new)
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), old, new))
  assert all(changed), "every BN's running stats must move in train mode"
  assert not np.allclose(np.asarray(logits), np.asarray(eval_logits))  # batch vs running stats

  if name == "wrn_16_1":
    # The reference taps preact by calling block2.layer[0].bn1 a second time on f1, so in train mode
    # its running mean (from 0) becomes (1 - 0.9^2) * batch mean.
    f1 = np.asarray(features["feats"][1])
    bn_mean = np.asarray(new["block2"]["layer"]["0"]["bn1"]["mean"])
    np.testing.assert_allclose(bn_mean, 0.19 * f1.mean(axis=(0, 1, 2)), atol=1e-5)
    assert np.all(np.asarray(variables["params"]["fc"]["bias"]) == 0)
  if name == "resnet8":
    kernel = np.asarray(variables["params"]["layer2"]["0"]["conv2"]["kernel"])  # kaiming fan_out
    np.testing.assert_allclose(kernel.std(), np.sqrt(2 / (9 * 32)), rtol=0.1)
  if name == "vgg8":
    kernel = np.asarray(variables["params"]["classifier"]["kernel"])  # N(0, 0.01)
    np.testing.assert_allclose(kernel.std(), 0.01, rtol=0.1)
