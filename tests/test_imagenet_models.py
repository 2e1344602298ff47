"""The ImageNet models (torchvision ResNet-18/34/50, mdistiller MobileNetV1) against PyTorch references.

* Parameter counts: the torch reference, the Flax model and the published count agree.
  torchvision's documented counts for resnet18/34/50; MobileNetV1 1.0 / 1000 classes has 4,231,976,
  the trainable count of `keras.applications.MobileNet(alpha=1.0, weights=None)` (same layers: 3x3/2
  stem to 32, 13 depthwise-separable blocks, no conv biases, a 1024 -> 1000 classifier with bias;
  checked once by hand, not here: importing Keras would cost more than this whole file) and the
  "4.2M" of Howard et al. (2017), Table 8.
* `state_dict` layout: Flax variables exported by `kdjax.convert` have the reference's keys, shapes
  and order (so torchvision's `resnet34-333f7ec4.pth` / `resnet50-19c8e357.pth` import).
* Numerics: random weights with non-trivial BN statistics go through `state_dict_to_variables`;
  eval-mode logits and every feature tap within 1e-4 in float32, train mode (batch statistics and
  running-stat updates) within 1e-8 in float64 on both sides (see test_convert_parity.py for why).

Inputs are small to keep the file cheap: the ResNets (adaptive pooling) run on 64x80 images, a
non-square size whose odd 5-pixel map also exercises the stride-2 padding; MobileNetV1 runs at 224
because the published `model.14` is AvgPool2d(7), global only on the 7x7 map of a 224-pixel input.
"""
from __future__ import annotations

import functools
import zlib
from typing import Any

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # torch's intra-op threads fight XLA's for the 2 cores

from kdjax import convert  # noqa: E402
from kdjax import models  # noqa: E402
from tests.torch_reference.imagenet_models import MODELS  # noqa: E402

ATOL = 1e-4  # float32 eval mode
ATOL64 = 1e-8  # float64 train mode
NUM_CLASSES = 1000

# Trainable parameters. ResNets: torchvision's published counts. MobileNetV1: module docstring.
PARAM_COUNTS = {
    "imagenet_resnet18": 11_689_512,
    "imagenet_resnet34": 21_797_672,
    "imagenet_resnet50": 25_557_032,
    "imagenet_mobilenetv1": 4_231_976,
}
# state_dict entries (every BN adds running_mean, running_var, num_batches_tracked).
STATE_DICT_ENTRIES = {"imagenet_resnet18": 122, "imagenet_resnet34": 218, "imagenet_resnet50": 320,
                      "imagenet_mobilenetv1": 164}
# (batch, height, width) of the parity inputs, NCHW on the torch side.
INPUT = {"imagenet_resnet18": (2, 64, 80), "imagenet_resnet34": (1, 64, 80),
         "imagenet_resnet50": (1, 64, 80), "imagenet_mobilenetv1": (1, 224, 224)}
# Channels of f0..f4 and of the pooled vector.
CHANNELS = {"imagenet_resnet18": ((64, 64, 128, 256, 512), 512),
            "imagenet_resnet34": ((64, 64, 128, 256, 512), 512),
            "imagenet_resnet50": ((64, 256, 512, 1024, 2048), 2048),
            "imagenet_mobilenetv1": ((32, 128, 256, 512, 1024), 1024)}
ARCHS = sorted(MODELS)


def test_models_are_registered():
  assert set(ARCHS) <= set(models.names())


def randomized_torch_model(arch: str) -> torch.nn.Module:
  """The reference with seeded random weights and non-trivial BN affine parameters and statistics."""
  torch.manual_seed(zlib.crc32(arch.encode()))
  model = MODELS[arch](num_classes=NUM_CLASSES)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.2)
        m.running_mean.normal_(0.0, 0.3)
        m.running_var.uniform_(0.5, 2.0)
  return model.eval()


def numpy_state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def images(arch: str, dtype: Any = np.float32) -> np.ndarray:
  b, h, w = INPUT[arch]
  return np.random.RandomState(0).randn(b, 3, h, w).astype(dtype)


def nhwc(t: torch.Tensor) -> np.ndarray:
  a = t.detach().numpy()
  return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def compare(flax_out: Any, torch_out: Any, atol: float, what: str) -> float:
  """Asserts logits, every feats / preact_feats tap and pooled agree; returns the largest diff."""
  (fl, ff), (tl, tf) = flax_out, torch_out
  pairs = {"logits": (fl, tl), "pooled": (ff["pooled"], tf["pooled"])}
  for key in ("feats", "preact_feats"):
    assert len(ff[key]) == len(tf[key]) == 5, (what, key, len(ff[key]), len(tf[key]))
    pairs.update({f"{key}[{i}]": ab for i, ab in enumerate(zip(ff[key], tf[key]))})
  diffs = {}
  for name, (a, b) in pairs.items():
    a, b = np.asarray(a), nhwc(b)
    assert a.shape == b.shape, (what, name, a.shape, b.shape)
    diffs[name] = float(np.max(np.abs(a - b)))
  bad = {k: f"{v:.2e}" for k, v in diffs.items() if not v <= atol}
  assert not bad, f"{what}: max |flax - torch| above {atol}: {bad}"
  return max(diffs.values())


@pytest.mark.parametrize("arch", ARCHS)
def test_param_counts(arch: str):
  """Published count == torch reference == Flax model (abstract shapes only)."""
  tm = MODELS[arch](num_classes=NUM_CLASSES)
  n_torch = sum(p.numel() for p in tm.parameters() if p.requires_grad)
  expected = convert.mapping.expected_variables(arch, NUM_CLASSES)
  n_flax = sum(int(np.prod(shape)) for (col, _, _), (shape, _) in expected.items() if col == "params")
  assert n_torch == n_flax == PARAM_COUNTS[arch]
  assert len(tm.state_dict()) == STATE_DICT_ENTRIES[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_layout(arch: str):
  """Flax variables exported by `kdjax.convert` have the reference's keys, shapes and order."""
  expected = convert.mapping.expected_variables(arch, NUM_CLASSES)
  # Zeros in the model's own structure: only the layout is under test.
  variables = convert.mapping.unflatten_variables(
      {t: np.zeros(shape, dtype) for t, (shape, dtype) in expected.items()})
  got = convert.variables_to_state_dict(variables, arch, NUM_CLASSES)
  want = MODELS[arch](num_classes=NUM_CLASSES).state_dict()
  assert list(got) == list(want)
  assert {k: tuple(v.shape) for k, v in got.items()} == {k: tuple(v.shape) for k, v in want.items()}


def test_torchvision_key_names():
  """Spot checks of the torchvision / mdistiller names the released checkpoints use."""
  sd50 = convert.variables_to_state_dict(convert.mapping.unflatten_variables(
      {t: np.zeros(s, d) for t, (s, d) in convert.mapping.expected_variables("imagenet_resnet50",
                                                                             NUM_CLASSES).items()}))
  assert sd50["conv1.weight"].shape == (64, 3, 7, 7)
  assert sd50["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)  # stride 1, 64 -> 256
  assert sd50["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)
  assert "layer2.1.downsample.0.weight" not in sd50
  assert sd50["fc.weight"].shape == (1000, 2048)
  params18 = convert.mapping.expected_variables("imagenet_resnet18", NUM_CLASSES)
  assert ("params", ("layer1", "0", "downsample", "0"), "kernel") not in params18  # 64 -> 64
  mv1 = convert.mapping.expected_variables("imagenet_mobilenetv1", NUM_CLASSES)
  assert mv1[("params", ("model", "1", "0"), "kernel")][0] == (3, 3, 1, 32)  # depthwise
  assert mv1[("params", ("model", "13", "3"), "kernel")][0] == (1, 1, 1024, 1024)
  assert mv1[("batch_stats", ("model", "0", "1"), "var")][0] == (32,)


@functools.cache
def reference(arch: str) -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
  """(randomized torch model in eval mode, its state_dict as NumPy), built once per arch."""
  tm = randomized_torch_model(arch)
  return tm, numpy_state_dict(tm)


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_parity(arch: str):
  """Eval mode, float32: logits and every tap within 1e-4; shapes of the taps."""
  tm, sd = reference(arch)
  variables = convert.state_dict_to_variables(sd, arch, NUM_CLASSES)
  x = images(arch)
  with torch.no_grad():
    t_out = tm(torch.from_numpy(x))
  model = models.get(arch, num_classes=NUM_CLASSES)
  f_out = jax.jit(model.apply, static_argnames="train")(variables, x.transpose(0, 2, 3, 1), train=False)
  diff = compare(f_out, t_out, ATOL, f"{arch} eval")
  widths, pooled = CHANNELS[arch]
  assert [f.shape[-1] for f in f_out[1]["feats"]] == list(widths)
  assert f_out[1]["pooled"].shape == (x.shape[0], pooled) and f_out[0].shape == (x.shape[0], NUM_CLASSES)
  print(f"\n{arch}: eval float32 max diff {diff:.1e}")


@pytest.mark.parametrize("arch", ["imagenet_resnet18", "imagenet_resnet50", "imagenet_mobilenetv1"])
def test_train_parity_float64(arch: str):
  """Train mode, float64 on both sides: outputs and the BN running-stat updates match."""
  _, sd = reference(arch)
  tm = MODELS[arch](num_classes=NUM_CLASSES)  # a fresh copy: train mode mutates running stats
  tm.load_state_dict({k: torch.tensor(v) for k, v in sd.items()})
  tm = tm.double().train()
  x = images(arch, np.float64)
  if x.shape[0] == 1:  # batch statistics over a single image are fine, but two are a better test
    x = np.concatenate([x, -0.5 * x[:, :, ::-1]])
  with torch.no_grad():
    t_out = tm(torch.from_numpy(x))
  t_sd = {k: v.numpy() for k, v in tm.state_dict().items()}  # float64

  model = models.get(arch, num_classes=NUM_CLASSES)
  with jax.enable_x64(True):
    variables = jax.tree.map(lambda a: np.asarray(a, np.float64),
                             convert.state_dict_to_variables(sd, arch, NUM_CLASSES))
    f_out, mutated = jax.jit(model.apply, static_argnames=("train", "mutable"))(
        variables, x.transpose(0, 2, 3, 1), train=True, mutable=("batch_stats",))
    diff = compare(f_out, t_out, ATOL64, f"{arch} train (float64)")
    f_stats = jax.tree.map(np.asarray, mutated["batch_stats"])
  flat_f = convert.mapping.flatten_variables({"batch_stats": f_stats})
  # Running statistics by torch key, in float64 (state_dict_to_variables would cast to float32).
  stats = {convert.mapping.torch_key(t): v for t, v in flat_f.items()}
  assert len(stats) == sum(k.endswith(("running_mean", "running_var")) for k in t_sd)
  stat_diff = max(float(np.max(np.abs(v - t_sd[k]))) for k, v in stats.items())
  assert stat_diff <= ATOL64, f"{arch}: running statistics differ by {stat_diff}"
  assert all(not np.array_equal(t_sd[k], sd[k]) for k in stats)  # every BN ran in train mode
  print(f"\n{arch}: train float64 max diff {diff:.1e}, running stats {stat_diff:.1e}")
