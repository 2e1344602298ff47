"""Loss-level PyTorch parity of feature methods with their own parts (CRD, KDSVD, OFD): shared helpers.

The rule, as in tests/test_feature_baselines.py: float64 must agree with the PyTorch reference
(tests/torch_reference/crd_ofd_kdsvd.py) elementwise to 1e-9 (KDSVD too, although its SVD
gradients come from two different formulas: measured 1.4e-14), float32 to 1e-5 norm-wise or,
where PyTorch's own float32 result is further than that from float64, to the same order as
PyTorch (at most 4x its error). Random inputs have the shapes the kdjax models produce (NHWC
here, NCHW for PyTorch); the methods' own modules get identical weights.
"""
import jax
import numpy as np
import torch

from kdjax import methods, recipes
from tests import parity

RTOL32, RTOL64 = 1e-5, 1e-9


def config(**overrides):
  config = recipes.base_config()
  for key, value in overrides.items():
    node, field = key.split(".")
    config[node][field] = value
  return config


def tensor(x, grad=False):
  return torch.tensor(np.ascontiguousarray(x), requires_grad=grad)


def grad(t):
  """A leaf tensor's gradient as NumPy (zeros where the loss does not depend on it)."""
  return np.zeros(tuple(t.shape), t.detach().numpy().dtype) if t.grad is None else t.grad.numpy()


def assert_equal64(ours, theirs):
  """float64: elementwise to RTOL64, absolute slack RTOL64 * max |reference| of the entry (each
  entry its own scale, unlike tests/parity.py's, which gives every parameter gradient the largest's)."""
  assert ours.keys() == theirs.keys(), (sorted(ours), sorted(theirs))
  for key, expected in theirs.items():
    scale = float(np.max(np.abs(expected))) if np.size(expected) else 0.0
    np.testing.assert_allclose(ours[key], expected, rtol=RTOL64, atol=RTOL64 * scale, err_msg=key)


def assert_equal32(ours, theirs, truth):
  """float32: within RTOL32 (norm-wise) of PyTorch, or as accurate (to 4x) as it vs float64."""
  assert ours.keys() == theirs.keys(), (sorted(ours), sorted(theirs))
  norm = lambda x: float(np.linalg.norm(np.asarray(x, np.float64)))
  for key, expected in theirs.items():
    bound = RTOL32 * norm(truth[key])
    if norm(ours[key] - expected) <= bound:
      continue
    ours_err, theirs_err = norm(ours[key] - truth[key]), norm(expected - truth[key])
    assert ours_err <= 4.0 * theirs_err + bound, (key, ours_err, theirs_err, bound)


def _loss_and_grads(method, params, state, s_out, t_out, batch):
  """((loss, (metrics, new state)), d/d (params, student logits, student features, teacher features))."""

  def total(params, s_logits, s_feats, t_feats):
    loss, metrics, new_state = method.loss(params, state, (s_logits, s_feats), (t_out[0], t_feats),
                                           batch, methods.Progress(step=0, epoch=0))
    return loss, (metrics, new_state)

  return jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2, 3), has_aux=True))(
      params, s_out[0], s_out[1], t_out[1])


def jax_results(name, method, params, state, s_out, t_out, batch, keep_state=()):
  """Loss, term, gradients w.r.t. the student's outputs and the method params, chosen state leaves."""
  (value, (metrics, new_state)), (g_params, g_logits, g_feats, g_teacher) = _loss_and_grads(
      method, params, state, s_out, t_out, batch)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_teacher))  # teacher: constant
  out = {"loss": value, f"loss_{name}": metrics[f"loss_{name}"], "d/d logits": g_logits,
         "d/d pooled": g_feats["pooled"]}
  out.update({f"d/d feats[{i}]": g for i, g in enumerate(g_feats["feats"])})
  out.update({f"d/d preact_feats[{i}]": g for i, g in enumerate(g_feats["preact_feats"])})
  out.update({f"d/d params: {parity.path(p)}": g for p, g in jax.tree_util.tree_leaves_with_path(g_params)})
  out.update({f"state: {parity.path(p)}": v for p, v in jax.tree_util.tree_leaves_with_path(new_state)
              if parity.path(p) in keep_state})
  return {k: np.asarray(v) for k, v in out.items()}


def torch_student(s_out, dtype):
  """Leaf tensors (requiring grad) of the student's logits and features, NCHW."""
  return (tensor(np.asarray(s_out[0], dtype), True),
          {k: [tensor(parity.nchw(np.asarray(f, dtype)), True) for f in s_out[1][k]]
           for k in ("feats", "preact_feats")} | {"pooled": tensor(np.asarray(s_out[1]["pooled"], dtype), True)})


def torch_common(name, cfg, logits, s, term, labels):
  """Total loss, backward, and the results every method shares (NHWC gradients)."""
  ce = torch.nn.functional.cross_entropy(logits, torch.tensor(labels, dtype=torch.long))
  total = cfg[name].ce_weight * ce + cfg[name].feat_weight * term
  total.backward()
  out = {"loss": total.detach().numpy(), f"loss_{name}": term.detach().numpy(),
         "d/d logits": grad(logits), "d/d pooled": grad(s["pooled"])}
  for key in ("feats", "preact_feats"):
    out.update({f"d/d {key}[{i}]": parity.nhwc(grad(f)) for i, f in enumerate(s[key])})
  return out


def labels(seed=5, batch=parity.BATCH, classes=100):
  return np.random.default_rng(seed).integers(0, classes, batch).astype(np.int32)

