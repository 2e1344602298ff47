"""KDSVD: PyTorch parity, the SVD's custom gradient, degenerate inputs, its config.

Tolerances: tests/loss_parity.py.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import methods, recipes
from kdjax.errors import UserError
from kdjax.methods import kdsvd
from experiments.repro import tables
from tests import loss_parity as lp
from tests import parity
from tests.torch_reference import crd_ofd_kdsvd as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _torch_kdsvd(cfg, s_out, t_out, labels, dtype):
  logits, s = lp.torch_student(s_out, dtype)
  g_t = [lp.tensor(parity.nchw(np.asarray(f, dtype))) for f in t_out[1]["feats"][1:]]
  term = ref.kdsvd(s["feats"][1:], g_t, cfg.kdsvd.k)
  return lp.torch_common("kdsvd", cfg, logits, s, term, labels)


# KDSVD pairs whose stage maps are equally wide (the reference's requirement).
# (resnet56 -> resnet20 rather than resnet32x4 -> resnet8x4: the same code at a quarter of the width.)
KDSVD_PAIRS = {"same_family": ("resnet56", "resnet20"), "cross_family": ("wrn_16_2", "resnet8")}


@pytest.mark.parametrize("pair", list(KDSVD_PAIRS))
def test_kdsvd_matches_torch_float64(pair):
  teacher, student = KDSVD_PAIRS[pair]
  cfg = recipes.base_config()
  s_out, t_out = parity.outputs(student, 0, np.float64), parity.outputs(teacher, 1, np.float64)
  with jax.enable_x64(True):
    ours = lp.jax_results("kdsvd", methods.get("kdsvd", cfg), {}, {}, s_out, t_out,
                        {"label": lp.labels(), "index": np.arange(parity.BATCH), "rng": jax.random.key(0)})
  assert ours["loss_kdsvd"] > 0
  lp.assert_equal64(ours, _torch_kdsvd(cfg, s_out, t_out, lp.labels(), np.float64))


def test_kdsvd_matches_torch_float32():
  teacher, student = KDSVD_PAIRS["same_family"]
  cfg = recipes.base_config()
  s_out, t_out = parity.outputs(student, 2), parity.outputs(teacher, 3)
  ours = lp.jax_results("kdsvd", methods.get("kdsvd", cfg), {}, {}, s_out, t_out,
                      {"label": lp.labels(), "index": np.arange(parity.BATCH), "rng": jax.random.key(0)})
  lp.assert_equal32(ours, _torch_kdsvd(cfg, s_out, t_out, lp.labels(), np.float32),
                  _torch_kdsvd(cfg, s_out, t_out, lp.labels(), np.float64))


def test_svd_right_gradient_matches_finite_differences():
  """The custom VJP of the right singular vectors and values, against central differences."""
  x = np.random.default_rng(0).standard_normal((2, 9, 4))
  w_v, w_s = np.random.default_rng(1).standard_normal((2, 4, 4)), np.random.default_rng(2).standard_normal((2, 4))

  def f(x):
    s, v = kdsvd.svd_right(x)
    v = v * jnp.sign(v[:, :1, :])  # a sign-invariant function of the vectors
    return jnp.sum(w_v * v) + jnp.sum(w_s * s)

  with jax.enable_x64(True):
    g = np.asarray(jax.grad(f)(x))
    fd = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
      e = np.zeros_like(x)
      e[i] = 1e-6
      fd[i] = (f(x + e) - f(x - e)) / 2e-6
  np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-7)


@jax.jit
def _kdsvd_value_and_grads(g_s, g_t):
  return jax.value_and_grad(lambda g: kdsvd.kdsvd_loss(g, g_t, 1))(g_s)


def _kdsvd_grads(g_s, g_t):
  value, grads = _kdsvd_value_and_grads(g_s, g_t)
  return np.asarray(value), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("case", ["zero_student", "zero_both", "repeated_singular_values",
                                  "nonfinite_entry"])
def test_kdsvd_finite_value_and_gradient_at_degenerate_inputs(case):
  """Zero maps, repeated singular values and inf entries: finite loss and gradient (JAX's SVD rule: NaN)."""
  _, t_out = parity.outputs("resnet56", 1)
  _, s_out = parity.outputs("resnet20", 0)
  g_s, g_t = [np.asarray(f) for f in s_out["feats"][1:]], [np.asarray(f) for f in t_out["feats"][1:]]
  if case.startswith("zero"):
    g_s = [np.zeros_like(f) for f in g_s]
    if case == "zero_both":
      g_t = [np.zeros_like(f) for f in g_t]
  elif case == "repeated_singular_values":
    # Every map's (C*H, W) view with orthogonal columns of equal norm: all W singular values equal.
    def orthogonal(f):
      b, h, w, c = f.shape
      q = np.linalg.qr(np.random.default_rng(0).standard_normal((b, c * h, w)))[0]
      return np.transpose(q.reshape(b, c, h, w), (0, 2, 3, 1)).astype(np.float32)
    g_s = [orthogonal(f) for f in g_s]
    x = jnp.transpose(jnp.asarray(g_s[0]), (0, 3, 1, 2)).reshape(parity.BATCH, -1, g_s[0].shape[2])
    # JAX's own SVD gradient is not finite here; ours must be.
    jax_grad = jax.grad(lambda x: jnp.sum(jnp.linalg.svd(x, full_matrices=False)[2][:, :4]))(x)
    assert not np.all(np.isfinite(jax_grad))
  else:
    g_s[1] = g_s[1].copy()
    g_s[1][0, 0, 0, 0] = np.inf
  value, grads = _kdsvd_grads(g_s, g_t)
  assert np.isfinite(value)
  for g in grads:
    assert np.all(np.isfinite(g))
  if case == "nonfinite_entry":
    assert grads[1][0, 0, 0, 0] == 0


def test_kdsvd_refuses_maps_of_different_width():
  _, s_out = parity.outputs("ShuffleV2", 0)
  _, t_out = parity.outputs("resnet32x4", 1)
  with pytest.raises(UserError, match="equally wide"):
    kdsvd.kdsvd_loss(s_out["feats"][1:], t_out["feats"][1:], 1)


def test_kdsvd_loss_ignores_singular_vector_signs():
  """Flipping a student map's sign flips its singular vectors; alignment makes the loss the same."""
  _, s_out = parity.outputs("resnet20", 0)
  _, t_out = parity.outputs("resnet56", 1)
  g_s, g_t = list(s_out["feats"][1:]), list(t_out["feats"][1:])
  loss = jax.jit(functools.partial(kdsvd.kdsvd_loss, k=1))
  value, flipped = loss(g_s, g_t), loss([-g_s[0]] + g_s[1:], g_t)
  np.testing.assert_allclose(flipped, value, rtol=1e-6)


def test_config_carries_the_published_settings():
  svd_cfg = recipes.load_config_module(os.path.join(ROOT, "configs", "kdsvd_cifar.py"))
  assert tables.REPORTED["kdsvd_cifar"] == {} and list(svd_cfg.PAIRS) == ["resnet32x4,resnet8x4"]
  s = svd_cfg.get_config()
  assert (s.kdsvd.ce_weight, s.kdsvd.feat_weight, s.kdsvd.k) == (1.0, 1.0, 1)
