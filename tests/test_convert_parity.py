"""Numerical parity of every kdjax model with its PyTorch reference, through `kdjax.convert`.

For each architecture: random PyTorch weights (non-trivial BN weight/bias/running stats) are saved
as a released-style checkpoint (`{"model": sd}` plus extra pickled objects, some keys carrying a
DataParallel `module.` prefix), imported with `from_torch`, and the Flax model must reproduce the
PyTorch logits and every feature tap, in eval mode and in train mode (batch statistics), and
update the BN running statistics the same way.

Precision. Eval mode runs in float32: every output within 1e-4 absolute (observed ~1e-6). Train
mode runs in float64 on both sides, within 1e-8 (observed ~1e-12): with batch 2, train-mode BN
divides by small-sample batch deviations, which amplifies float32 rounding layer after layer (in
float32 the deep taps of resnet110 differ by ~1e-3 at magnitude ~13, logits by up to 5e-5), so
float32 could not tell a real semantic difference from rounding; float64 can.

Running statistics. PyTorch folds the *unbiased* batch variance (x n / (n - 1)) into
`running_var`; `flax.linen.BatchNorm` would use the biased one (docs/protocol.md §5.5), but
`kdjax.models.layers.BatchNorm` reproduces PyTorch's rule, so Flax's running mean and var are
compared with PyTorch's directly. A forward pre-hook records every BN call's input, from which the
test replays both rules: PyTorch's own `running_var` must equal the unbiased replay (this documents
the rule), and a Flax mismatch is diagnosed as "biased update" when it equals the biased replay. A
BN called twice in one forward (WRN's preact taps) is replayed twice.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zlib
from typing import Any

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
# On a 2-core machine torch's intra-op threads spin against XLA's pool: one thread is ~40x faster.
torch.set_num_threads(1)

from kdjax import convert  # noqa: E402
from kdjax import models  # noqa: E402
from tests.torch_reference.models import MODELS  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATOL = 1e-4  # float32 eval mode, absolute (observed ~1e-6)
ATOL64 = 1e-8  # float64 train mode, absolute (observed ~1e-12)
MOMENTUM = 0.1  # PyTorch BN momentum: running <- (1 - m) running + m batch_stat
ARCHS = sorted(set(models.names()) & set(MODELS))


def _seed(arch: str) -> int:
  return zlib.crc32(arch.encode())


def randomized_torch_model(arch: str, num_classes: int = 100) -> torch.nn.Module:
  """The reference model with random weights and non-trivial BN affine parameters and statistics."""
  torch.manual_seed(_seed(arch))
  model = MODELS[arch](num_classes=num_classes)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.2)
        m.running_mean.normal_(0.0, 0.3)
        m.running_var.uniform_(0.5, 2.0)
  return model.eval()


def save_released_style(model: torch.nn.Module, path: str) -> None:
  """Saves like the released teachers: `{"model": sd}` plus pickled extras; half the keys `module.`."""
  sd = {(f"module.{k}" if i % 2 else k): v for i, (k, v) in enumerate(model.state_dict().items())}
  torch.save({"model": sd, "epoch": 240, "accuracy": np.float64(73.5),
              "opt": argparse.Namespace(lr=0.05, model="x")}, path)


def images(seed: int = 0, batch: int = 2) -> np.ndarray:
  """A float32 NCHW batch."""
  return np.random.RandomState(seed).randn(batch, 3, 32, 32).astype(np.float32)


def nhwc(t: torch.Tensor) -> np.ndarray:
  """A torch activation in Flax layout (NCHW -> NHWC; vectors unchanged)."""
  a = t.detach().numpy()
  return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def max_diff(a: Any, b: np.ndarray) -> float:
  a = np.asarray(a)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


def compare_outputs(flax_out: Any, torch_out: Any, what: str, atol: float = ATOL) -> dict[str, float]:
  """Asserts logits and every feature tap agree within `atol`; returns the max diffs."""
  (fl, ff), (tl, tf) = flax_out, torch_out
  diffs = {"logits": max_diff(fl, tl.detach().numpy())}
  for key in ("feats", "preact_feats"):
    assert len(ff[key]) == len(tf[key]), f"{what}: {key} has {len(ff[key])} taps, torch {len(tf[key])}"
    for i, (a, b) in enumerate(zip(ff[key], tf[key])):
      diffs[f"{key}[{i}]"] = max_diff(a, nhwc(b))
  diffs["pooled"] = max_diff(ff["pooled"], nhwc(tf["pooled"]))
  bad = {k: f"{v:.2e}" for k, v in diffs.items() if not v <= atol}
  assert not bad, f"{what}: max |flax - torch| above {atol}: {bad}"
  return diffs


def record_bn_inputs(model: torch.nn.Module) -> tuple[dict[str, list[tuple[np.ndarray, np.ndarray, int]]], list]:
  """Hooks every BN: name -> [(batch mean, biased batch var, n) per call] (float64)."""
  calls: dict[str, list[tuple[np.ndarray, np.ndarray, int]]] = {}
  handles = []
  for name, m in model.named_modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      def hook(_, inputs, name=name):
        x = inputs[0].detach().double()
        n = x.numel() // x.shape[1]
        calls.setdefault(name, []).append((x.mean((0, 2, 3)).numpy(),
                                           x.var((0, 2, 3), unbiased=False).numpy(), n))
      handles.append(m.register_forward_pre_hook(hook))
  return calls, handles


def replay(start: np.ndarray, stats: list[np.ndarray]) -> np.ndarray:
  """running <- (1 - m) running + m stat, once per recorded call."""
  r = start.astype(np.float64)
  for s in stats:
    r = (1 - MOMENTUM) * r + MOMENTUM * s
  return r


def subtree(tree: dict, dotted: str) -> dict:
  for part in dotted.split("."):
    tree = tree[part]
  return tree


def test_reference_zoo_is_fully_registered():
  """Every reference architecture has a Flax model (parity is only tested for the intersection)."""
  assert sorted(MODELS) == sorted(set(MODELS) & set(models.names())), \
      f"not registered in kdjax.models: {sorted(set(MODELS) - set(models.names()))}"


# XLA:CPU compiles these thin, deep ResNets slower as one jitted graph than op by op; every other
# model (grouped convs, many shapes) is faster jitted. Only a matter of test time.
_EAGER = {"resnet44", "resnet56", "resnet110"}


def flax_apply(arch: str, model: Any):
  """`model.apply`, jitted unless eager is cheaper for `arch`."""
  return model.apply if arch in _EAGER else jax.jit(model.apply, static_argnames=("train", "mutable"))


def bn_modules(model: torch.nn.Module) -> dict[str, torch.nn.BatchNorm2d]:
  return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}


def torch_train_step(tm: torch.nn.Module, x: np.ndarray):
  """Train-mode forward; returns (outputs, {bn: (old mean, old var)}, {bn: recorded calls})."""
  old = {name: (m.running_mean.numpy().copy(), m.running_var.numpy().copy())
         for name, m in bn_modules(tm).items()}
  calls, handles = record_bn_inputs(tm)
  tm.train()
  with torch.no_grad():
    out = tm(torch.from_numpy(x))
  for h in handles:
    h.remove()
  return out, old, calls


@pytest.mark.parametrize("arch", ARCHS)
def test_parity(arch: str, tmp_path):
  """Eval- and train-mode outputs and BN running-stat updates match PyTorch after from_torch."""
  tm = randomized_torch_model(arch)
  path = str(tmp_path / f"{arch}.pth")
  save_released_style(tm, path)
  variables = convert.from_torch(path, arch)
  apply = flax_apply(arch, models.get(arch))
  x = images(_seed(arch) % 1000)

  # Eval mode, float32: running statistics.
  with torch.no_grad():
    t_eval = tm(torch.from_numpy(x))
  d_eval = compare_outputs(apply(variables, x.transpose(0, 2, 3, 1), train=False), t_eval, f"{arch} eval")

  # Train mode, float64 (module docstring): batch statistics and the running-stat update. The
  # float32 -> float64 casts are exact, so both sides start from identical weights.
  x64 = x.astype(np.float64)
  t_train, old, calls = torch_train_step(tm.double(), x64)
  with jax.enable_x64(True):
    variables64 = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
    f_train, mutated = apply(variables64, x64.transpose(0, 2, 3, 1), train=True, mutable=("batch_stats",))
    d_train = compare_outputs(f_train, t_train, f"{arch} train (float64)", ATOL64)
    new_stats = jax.tree.map(np.asarray, mutated["batch_stats"])

  d_mean = d_var = 0.0
  for name, m in bn_modules(tm).items():
    assert name in calls, f"{arch}: BN {name} was not called in the train-mode forward"
    means = [c[0] for c in calls[name]]
    unbiased = [v * n / (n - 1) for _, v, n in calls[name]]
    # PyTorch's rule, made explicit: replaying the unbiased variance gives its running_var.
    np.testing.assert_allclose(m.running_mean.numpy(), replay(old[name][0], means), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.running_var.numpy(), replay(old[name][1], unbiased), rtol=1e-12, atol=1e-12)
    stats = subtree(new_stats, name)
    biased = replay(old[name][1], [c[1] for c in calls[name]])
    hint = (" (Flax folded in the biased batch variance)"
            if np.allclose(stats["var"], biased, rtol=1e-10, atol=1e-12) else "")
    dm, dv = max_diff(stats["mean"], m.running_mean.numpy()), max_diff(stats["var"], m.running_var.numpy())
    assert dm <= ATOL64, f"{arch}: running mean of {name} differs by {dm}"
    assert dv <= ATOL64, f"{arch}: running var of {name} differs by {dv}{hint}"
    d_mean, d_var = max(d_mean, dm), max(d_var, dv)
  print(f"\n{arch}: eval float32 {max(d_eval.values()):.1e} (logits {d_eval['logits']:.1e}); "
        f"train float64 {max(d_train.values()):.1e}; running mean {d_mean:.1e}, running var {d_var:.1e}")


# ---------------------------------------------------------------------------------------------
# Importer behaviour (on resnet8: cheap)


@pytest.fixture(scope="module")
def resnet8_sd() -> dict[str, np.ndarray]:
  return {k: v.numpy() for k, v in randomized_torch_model("resnet8").state_dict().items()}


def test_unknown_missing_and_misshapen_keys_are_named(resnet8_sd):
  sd = dict(resnet8_sd)
  sd["layer1.0.extra.weight"] = np.zeros((3,), np.float32)
  del sd["layer2.0.bn1.running_var"]
  sd["fc.weight"] = np.zeros((10, 64), np.float32)
  with pytest.raises(ValueError) as e:
    convert.state_dict_to_variables(sd, "resnet8")
  msg = str(e.value)
  assert "unknown key(s): layer1.0.extra.weight" in msg
  assert "missing key(s): layer2.0.bn1.running_var" in msg
  assert "fc.weight: checkpoint [10, 64] vs model [100, 64]" in msg


@pytest.mark.parametrize("edit, name", [
    (lambda sd: sd.update({"bogus.bias": np.zeros(2, np.float32)}), "bogus.bias"),
    (lambda sd: sd.pop("layer3.0.downsample.0.weight"), "layer3.0.downsample.0.weight"),
    (lambda sd: sd.update({"conv1.weight": np.zeros((16, 3, 5, 5), np.float32)}), "conv1.weight"),
    (lambda sd: sd.update({"bn1.weight": np.zeros((16, 1), np.float32)}), "bn1.weight"),
])
def test_each_error_names_the_key(resnet8_sd, edit, name):
  sd = dict(resnet8_sd)
  edit(sd)
  with pytest.raises(ValueError, match=name.replace(".", r"\.")):
    convert.state_dict_to_variables(sd, "resnet8")


def test_checkpoint_layouts(resnet8_sd):
  """Raw sd, {"model": sd}, module. prefixes, missing num_batches_tracked, mdistiller distiller."""
  ref = convert.state_dict_to_variables(resnet8_sd, "resnet8")
  no_counter = {k: v for k, v in resnet8_sd.items() if not k.endswith("num_batches_tracked")}
  prefixed = {"module." + k: v for k, v in resnet8_sd.items()}
  distiller = {**{"module.student." + k: v for k, v in resnet8_sd.items()},
               "module.teacher.conv1.weight": np.zeros((8, 3, 3, 3), np.float32),
               "module.conv_reg.weight": np.zeros((4, 4, 1, 1), np.float32)}
  for sd, sub in [({"model": resnet8_sd}, None), (no_counter, None), ({"model": prefixed}, None),
                  ({"model": distiller, "epoch": 3}, "student")]:
    got = convert.state_dict_to_variables(sd, "resnet8", submodule=sub)
    assert_trees_equal(got, ref)
  with pytest.raises(ValueError, match="submodule='student'"):
    convert.state_dict_to_variables(distiller, "resnet8")


def assert_trees_equal(a: dict, b: dict) -> None:
  fa, fb = convert.mapping.flatten_variables(a), convert.mapping.flatten_variables(b)
  assert sorted(fa) == sorted(fb)  # dict order is not semantic (jax.tree.map sorts keys)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


def test_round_trip_kdjax_torch_kdjax(tmp_path):
  """kdjax variables -> .pth -> strict torch load (same logits) -> kdjax: identical variables."""
  arch = "wrn_16_1"  # BN-first blocks, a 1x1 shortcut conv and a stem without BN
  model = models.get(arch, num_classes=10)
  x = images(1)
  # Random values in the model's own variable structure (cheaper than compiling `init`).
  rng = np.random.RandomState(0)
  variables = convert.mapping.unflatten_variables({
      t: (rng.uniform(0.5, 2.0, shape) if t[2] == "var" else 0.3 * rng.standard_normal(shape)).astype(dtype)
      for t, (shape, dtype) in convert.mapping.expected_variables(arch, 10).items()})
  path = str(tmp_path / "k.pth")
  convert.to_torch(variables, path, arch=arch)

  sd = torch.load(path, weights_only=True)["model"]
  tm = MODELS[arch](num_classes=10).eval()
  tm.load_state_dict(sd, strict=True)
  assert list(sd) == list(tm.state_dict()), "state_dict key order differs from PyTorch's"
  assert sd["bn1.num_batches_tracked"].dtype == torch.int64 and sd["bn1.num_batches_tracked"].ndim == 0
  with torch.no_grad():
    compare_outputs(flax_apply(arch, model)(variables, x.transpose(0, 2, 3, 1), train=False),
                    tm(torch.from_numpy(x)), f"{arch} exported")
  assert_trees_equal(convert.from_torch(path, arch, num_classes=10), variables)


def test_variables_to_state_dict_checks_the_arch(resnet8_sd):
  variables = convert.state_dict_to_variables(resnet8_sd, "resnet8")
  del variables["params"]["layer1"]["0"]["bn2"]
  with pytest.raises(ValueError, match=r"missing key\(s\): layer1\.0\.bn2\.weight, layer1\.0\.bn2\.bias"):
    convert.variables_to_state_dict(variables, "resnet8")


# ---------------------------------------------------------------------------------------------
# Command line and the torch-free import


def run_cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "kdjax.convert", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)


def test_cli_round_trip(tmp_path):
  arch = "resnet8x4"
  tm = randomized_torch_model(arch, num_classes=10)
  src = str(tmp_path / "src.pth")
  save_released_style(tm, src)
  model_dir, out = str(tmp_path / "model"), str(tmp_path / "back.pth")

  r = run_cli(f"--arch={arch}", f"--torch={src}", f"--out={model_dir}", "--dataset=cifar10")
  assert r.returncode == 0, r.stderr
  r = run_cli("--to-torch", f"--model={model_dir}", f"--out={out}")
  assert r.returncode == 0, r.stderr

  with open(os.path.join(model_dir, "meta.json")) as f:
    meta = json.load(f)
  assert meta["arch"] == arch and meta["num_classes"] == 10 and meta["dataset"] == "cifar10"
  assert meta["mean"] == [0.4914, 0.4822, 0.4465] and meta["std"] == [0.2470, 0.2435, 0.2616]
  assert meta["source_sha256"] == convert.sha256(src)
  back = torch.load(out, weights_only=True)["model"]
  ref = tm.state_dict()
  assert list(back) == list(ref)
  for k, v in ref.items():
    if not k.endswith("num_batches_tracked"):  # a step counter, not carried by Flax
      assert torch.equal(back[k], v), k


def test_cli_errors_are_one_line(tmp_path, capsys):
  """Every error: exit status 2 and one line on stderr, no traceback (checked in a real process once)."""
  from kdjax.convert import __main__ as cli  # pylint: disable=import-outside-toplevel
  src = str(tmp_path / "r8.pth")
  save_released_style(randomized_torch_model("resnet8"), src)
  out = f"--out={tmp_path / 'm'}"
  r = run_cli("--arch=resnet14", f"--torch={src}", out)
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
  assert r.stderr.count("\n") == 1 and "missing key(s): layer1.1.conv1.weight" in r.stderr, r.stderr
  for args, needle in [(["--arch=resnet8", f"--torch={tmp_path / 'nope.pth'}", out], "no such file"),
                       (["--arch=resnet9", f"--torch={src}", out], "unknown model 'resnet9'"),
                       (["--arch=resnet8", f"--torch={src}", out, "--dataset=imagenet"], "unknown --dataset"),
                       (["--arch=resnet8", f"--torch={src}", out, "--sha256=00"], "expected 00"),
                       (["--to-torch", f"--model={tmp_path}", f"--out={tmp_path / 'o.pth'}"], "no kdjax model"),
                       (["--arch=resnet8"], "required: --out")]:
    assert cli.main(args) == 2, args
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kdjax.convert: error: ") and needle in err, (args, err)


def test_import_without_torch():
  """`import kdjax.convert` needs no torch; reading a .pth then says how to install it."""
  code = ("import sys; sys.modules['torch'] = None\n"
          "import kdjax, kdjax.convert\n"
          "try:\n"
          "  kdjax.convert.from_torch('x.pth', 'resnet8')\n"
          "except ImportError as e:\n"
          "  print(e)\n")
  r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                     timeout=300, check=False)
  assert r.returncode == 0, r.stderr
  assert "pip install torch (CPU build is enough) to read .pth files" in r.stdout
