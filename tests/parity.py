"""The shared PyTorch-parity harness: inputs, layout conversion, weight copying, comparisons.

* `shapes`/`outputs`/`batch`: random model outputs of exactly a zoo model's shapes, and a batch;
* `nchw`/`nhwc`, `CONV`/`DENSE`/`SAME`, `load`: NHWC <-> NCHW and Flax -> torch weight copies;
* `assert_equal64`/`assert_equal32`: the float64 (elementwise, 1e-9) and float32 (norm-wise
  1e-5, or as accurate as PyTorch's own float32) comparisons;
* `FAST_COMPILE`: the cheaper XLA:CPU compilation every test process uses (tests/xla.py).
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch

from kdjax import models
from tests import xla

BATCH = 8
RTOL32, RTOL64 = 1e-5, 1e-9
FAST_COMPILE = xla.FAST_COMPILE


def cli_env(**extra: str) -> dict:
  """The environment of a CLI subprocess test: CPU, quiet TensorFlow, the repo importable and
  FAST_COMPILE (these runs compile a lot and train a few steps; both sides of every comparison
  they make run under the same flags), plus `extra`."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  flags = os.environ.get("XLA_FLAGS", "")
  flags = flags if FAST_COMPILE in flags else f"{flags} {FAST_COMPILE}".strip()
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", PYTHONPATH=root,
              XLA_FLAGS=flags, **extra)


@functools.lru_cache(maxsize=None)
def shapes(arch: str):
  """(feats shapes, preact shapes, pooled shape) of `arch` on 32x32 inputs, without compute."""
  model = models.get(arch, num_classes=100)
  x = jnp.zeros((1, 32, 32, 3), jnp.float32)
  out = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x, train=False), x,
                                           train=False))[1]
  return (tuple(f.shape[1:] for f in out["feats"]),
          tuple(f.shape[1:] for f in out["preact_feats"]), out["pooled"].shape[1:])


def outputs(arch: str, seed: int, dtype=np.float32, batch: int = BATCH):
  """Random `(logits, features)` shaped like `arch`'s; post-ReLU maps and pooled vectors >= 0."""
  rng = np.random.default_rng(seed)
  feats, preacts, pooled = shapes(arch)
  normal = lambda shape: rng.standard_normal((batch, *shape)).astype(np.float32).astype(dtype)
  return (normal((100,)),
          {"feats": tuple(np.maximum(normal(s), 0.0) for s in feats),
           "preact_feats": tuple(normal(s) for s in preacts),
           "pooled": np.abs(normal(pooled))})


def batch(seed: int = 5, batch: int = BATCH):  # pylint: disable=redefined-outer-name
  """Labels, dataset indices and a key for a batch of `batch` examples."""
  labels = np.random.default_rng(seed).integers(0, 100, batch).astype(np.int32)
  return {"label": labels, "index": np.arange(batch, dtype=np.int32), "rng": jax.random.key(0)}



def random_like(tree, seed: int, dtype):
  """NumPy N(0, 0.1^2) values in the shapes of `tree` (no jax.random: nothing to compile)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(dtype), tree)



def nchw(x):
  return np.transpose(x, (0, 3, 1, 2)) if x.ndim == 4 else x


def nhwc(x):
  return np.transpose(x, (0, 2, 3, 1)) if x.ndim == 4 else x


def path(path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)



# Flax conv kernels are (kh, kw, in, out), a transposed conv's (kh, kw, out, in): both map to
# the torch weight by the same permutation. Dense kernels are (in, out).
CONV = (lambda k: k.transpose(3, 2, 0, 1), lambda w: w.transpose(2, 3, 1, 0))
DENSE = (lambda k: k.T, lambda w: w.T)
SAME = (lambda x: x, lambda x: x)


def leaf(tree, path: str):
  for key in path.split("/"):
    tree = tree[key]
  return tree


def load(params, links):
  """Copies the Flax leaf at each path of `links` into its torch parameter; returns `links`."""
  with torch.no_grad():
    for path, (param, (to_torch, _)) in links.items():
      param.copy_(torch.tensor(to_torch(np.asarray(leaf(params, path)))))
  return links



def grad_scale(results) -> float:
  """Largest |gradient| over the method's params: the common scale of their tolerances.

  It matters for ConvReg's conv bias: a train-mode BN follows it, so its true gradient is 0
  and both frameworks return rounding noise of the size RTOL * (largest param gradient).
  """
  return max((float(np.max(np.abs(v))) for k, v in results.items() if k.startswith("d/d params")),
             default=0.0)


def assert_equal64(ours, theirs):
  """float64: elementwise to RTOL64, absolute slack RTOL64 * max |reference|."""
  assert ours.keys() == theirs.keys(), (sorted(ours), sorted(theirs))
  param_scale = grad_scale(theirs)
  for key, expected in theirs.items():
    scale = param_scale if key.startswith("d/d params") else float(np.max(np.abs(expected)))
    np.testing.assert_allclose(ours[key], expected, rtol=RTOL64, atol=RTOL64 * scale, err_msg=key)


def assert_equal32(ours, theirs, truth):
  """float32: within RTOL32 (norm-wise) of PyTorch, or as accurate (to 4x) as it vs float64."""
  assert ours.keys() == theirs.keys(), (sorted(ours), sorted(theirs))
  param_scale = grad_scale(truth)
  norm = lambda x: float(np.linalg.norm(np.asarray(x, np.float64)))
  for key, expected in theirs.items():
    floor = param_scale * np.sqrt(expected.size) if key.startswith("d/d params") else 0.0
    bound = RTOL32 * max(norm(truth[key]), floor)
    if norm(ours[key] - expected) <= bound:
      continue
    # PyTorch's own float32 error exceeds the bound (PKT's term: ~1e-4): ours must be of the same
    # order (observed: ~2x PyTorch's for PKT, smaller for SP; the two round in different orders).
    ours_err, theirs_err = norm(ours[key] - truth[key]), norm(expected - truth[key])
    assert ours_err <= 4.0 * theirs_err + bound, (key, ours_err, theirs_err, bound)
