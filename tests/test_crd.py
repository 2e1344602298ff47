"""CRD: PyTorch (RepDistiller) parity, the negative sampler, memory banks, numerical safety, its config.

Tolerances: tests/loss_parity.py.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kdjax import methods, recipes
from kdjax.errors import UserError
from kdjax.methods import crd
from experiments.repro import tables
from tests import loss_parity as lp
from tests import parity
from tests.torch_reference import crd_ofd_kdsvd as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


CRD_N, CRD_CLASSES, CRD_K = 120, 6, 24


def _crd_setup(dtype, z_first: bool, seed=0):
  """Method, params, state (random banks, Z = -1 or set), student/teacher outputs, batch."""
  cfg = lp.config(**{"crd.nce_k": CRD_K})
  method = methods.get("crd", cfg)
  # CRD reads the pooled vectors only; the maps are left out to keep the compiled tests small.
  pooled_only = lambda out: (out[0], {"feats": (), "preact_feats": (), "pooled": out[1]["pooled"]})
  s_out = pooled_only(parity.outputs("resnet8x4", seed, dtype))
  t_out = pooled_only(parity.outputs("ShuffleV2", seed + 1, dtype))
  rng = np.random.default_rng(seed + 2)
  train_labels = rng.integers(0, CRD_CLASSES, CRD_N).astype(np.int32)
  index = rng.choice(CRD_N, parity.BATCH, replace=False).astype(np.int32)
  data_info = {"num_train": CRD_N, "num_classes": CRD_CLASSES, "train_labels": train_labels}
  params, state = jax.eval_shape(functools.partial(method.init, data_info=data_info),
                                 jax.random.key(0), s_out, t_out)
  params = jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(dtype), params)
  stdv = 1.0 / np.sqrt(128 / 3)
  bank = lambda: rng.uniform(-stdv, stdv, (CRD_N, 128)).astype(dtype)
  z = (-1.0, -1.0) if z_first else (float(rng.uniform(500, 2000)), float(rng.uniform(500, 2000)))
  state = {"memory_s": bank(), "memory_t": bank(), "z_s": np.asarray(z[0], dtype),
           "z_t": np.asarray(z[1], dtype),
           "tables": {k: np.asarray(v) for k, v in crd.class_tables(train_labels, CRD_CLASSES).items()}}
  batch = {"label": train_labels[index], "index": index, "rng": jax.random.key(seed + 3)}
  return cfg, method, params, state, s_out, t_out, batch


def _torch_crd(cfg, params, state, s_out, t_out, batch, contrast_idx, dtype):
  logits, s = lp.torch_student(s_out, dtype)
  f_t = lp.tensor(np.asarray(t_out[1]["pooled"], dtype))
  embeds = {}
  for side, f in (("embed_s", s["pooled"]), ("embed_t", f_t)):
    e = ref.Embed(f.shape[1], cfg.crd.feat_dim).to(f.dtype)
    with torch.no_grad():
      e.linear.weight.copy_(lp.tensor(np.asarray(params[side]["kernel"], dtype).T))
      e.linear.bias.copy_(lp.tensor(np.asarray(params[side]["bias"], dtype)))
    embeds[side] = e
  term, mem_s, mem_t, z_s, z_t = ref.crd(
      s["pooled"], f_t, embeds["embed_s"], embeds["embed_t"], lp.tensor(state["memory_s"]),
      lp.tensor(state["memory_t"]), torch.tensor(batch["index"], dtype=torch.long),
      torch.tensor(np.asarray(contrast_idx), dtype=torch.long), float(state["z_s"]),
      float(state["z_t"]), cfg.crd.nce_t, cfg.crd.nce_m)
  out = lp.torch_common("crd", cfg, logits, s, term, batch["label"])
  for side in ("embed_s", "embed_t"):
    out[f"d/d params: {side}/kernel"] = embeds[side].linear.weight.grad.numpy().T
    out[f"d/d params: {side}/bias"] = embeds[side].linear.bias.grad.numpy()
  out.update({"state: memory_s": mem_s.numpy(), "state: memory_t": mem_t.numpy(),
              "state: z_s": np.asarray(z_s, dtype), "state: z_t": np.asarray(z_t, dtype)})
  return out


_CRD_STATE = ("memory_s", "memory_t", "z_s", "z_t")


def _crd_contrast_idx(state, batch):
  """The indices method.loss draws from batch['rng'] (the sampler is deterministic in its key)."""
  return crd.sample_contrast_indices(batch["rng"], jax.tree.map(jnp.asarray, state["tables"]),
                                     jnp.asarray(batch["index"]), jnp.asarray(batch["label"]), CRD_K)


@pytest.mark.parametrize("scores", ["dense", "gather"])
@pytest.mark.parametrize("z_first", [True, False], ids=["z_from_batch", "z_frozen"])
def test_crd_matches_torch_float64(z_first, scores, monkeypatch):
  """Loss, gradients, both updated banks and Z equal RepDistiller's formulation (given indices),
  with the scores from one product with the whole bank (CIFAR's case) or from gathered rows."""
  monkeypatch.setattr(crd, "DENSE_SCORES_MAX_ROWS_PER_CONTRAST", 0 if scores == "gather" else 10**9)
  with jax.enable_x64(True):
    cfg, method, params, state, s_out, t_out, batch = _crd_setup(np.float64, z_first)
    ours = lp.jax_results("crd", method, params, state, s_out, t_out, batch, _CRD_STATE)
    contrast_idx = _crd_contrast_idx(state, batch)
  assert ours["loss"].dtype == np.float64
  theirs = _torch_crd(cfg, params, state, s_out, t_out, batch, contrast_idx, np.float64)
  lp.assert_equal64(ours, theirs)
  if z_first:  # Z = mean score * N, now frozen
    assert float(ours["state: z_s"]) > 0 and float(ours["state: z_t"]) > 0
  else:
    assert float(ours["state: z_s"]) == float(state["z_s"])


def test_crd_matches_torch_float32():
  cfg, method, params, state, s_out, t_out, batch = _crd_setup(np.float32, True, seed=10)
  ours = lp.jax_results("crd", method, params, state, s_out, t_out, batch, _CRD_STATE)
  contrast_idx = _crd_contrast_idx(state, batch)
  theirs = _torch_crd(cfg, params, state, s_out, t_out, batch, contrast_idx, np.float32)
  truth = _torch_crd(cfg, jax.tree.map(lambda x: np.asarray(x, np.float64), params),
                     jax.tree.map(lambda x: np.asarray(x, np.float64) if np.asarray(x).dtype.kind == "f" else x, state),
                     s_out, t_out, batch, contrast_idx, np.float64)
  lp.assert_equal32(ours, theirs, truth)


def test_crd_memory_update_touches_only_the_batch_rows():
  _, method, params, state, s_out, t_out, batch = _crd_setup(np.float32, False, seed=20)
  _, _, new_state = jax.jit(method.loss)(params, state, s_out, t_out, batch,
                                         methods.Progress(step=0, epoch=0))
  for side in ("memory_s", "memory_t"):
    old, new = np.asarray(state[side]), np.asarray(new_state[side])
    rest = np.setdiff1d(np.arange(CRD_N), batch["index"])
    np.testing.assert_array_equal(new[rest], old[rest])
    np.testing.assert_allclose(np.linalg.norm(new[batch["index"]], axis=1), 1.0, rtol=1e-6)
    assert not np.allclose(new[batch["index"]], old[batch["index"]])


def _sample(labels, index, k, mode="exact", key=0, draws=1):
  """`draws` independent (B, K+1) draws of the sampler for anchors `index` of `labels`."""
  tables = jax.tree.map(jnp.asarray, crd.class_tables(labels, int(labels.max()) + 1))
  sample = jax.jit(jax.vmap(lambda key: crd.sample_contrast_indices(
      key, tables, jnp.asarray(index), jnp.asarray(labels[index]), k, mode)))
  return np.asarray(sample(jax.random.split(jax.random.key(key), draws)))


def test_crd_smallest_k_is_a_stable_argsort():
  """Row-wise k smallest in ascending order, ties (many here) by lower index, as argsort's."""
  keys = np.random.default_rng(0).integers(0, 7, (5, 300)).astype(np.float32) / 8
  keys[2] = 2.0  # one row of equal keys, as the sampler's own-class entries
  keys[3, :3] = 0.0
  got = np.asarray(jax.jit(crd.smallest_k, static_argnums=1)(jnp.asarray(keys), 120))
  np.testing.assert_array_equal(got, np.argsort(keys, axis=1, kind="stable")[:, :120])


def test_crd_sampler_negatives_other_classes_without_replacement():
  """K <= #negatives: K distinct in-range negatives, none of the anchor's class; positive = index."""
  labels = np.repeat(np.arange(5), 12)  # 5 classes x 12, 48 negatives each
  index = np.arange(0, 60, 4)
  idx = _sample(labels, index, 40, draws=3)
  assert idx.shape == (3, len(index), 41)
  np.testing.assert_array_equal(idx[:, :, 0], np.broadcast_to(index, (3, len(index))))
  neg = idx[:, :, 1:]
  assert neg.min() >= 0 and neg.max() < len(labels)
  assert np.all(labels[neg] != labels[index][None, :, None])
  assert all(len(set(row)) == 40 for row in neg.reshape(-1, 40))


def test_crd_sampler_mixed_replacement_per_class():
  """A class with fewer negatives than K samples them with replacement; the others without."""
  labels = np.array([0] * 50 + [1] * 5 + [2] * 5, np.int32)  # class 0 has 10 negatives
  index = np.array([0, 1, 50, 55])
  idx = _sample(labels, index, 20, draws=4)
  neg = idx[:, :, 1:]
  assert np.all(labels[neg] != labels[index][None, :, None]) and neg.max() < len(labels)
  # Class 0: only 10 candidates for 20 draws, so repeats; classes 1/2 (55 negatives): distinct.
  assert all(len(set(r)) <= 10 for r in neg[:, :2].reshape(-1, 20))
  assert all(len(set(r)) == 20 for r in neg[:, 2:].reshape(-1, 20))


@pytest.mark.parametrize("k", [30, 500], ids=["without_replacement", "with_replacement"])
def test_crd_sampler_is_uniform_over_other_classes(k):
  """Chi-square test: every other-class example equally likely (K=500 > #negatives: with replacement)."""
  labels = np.random.default_rng(0).integers(0, 4, 80).astype(np.int32)
  index = np.array([int(np.argmax(labels == 0))])
  idx = _sample(labels, index, k, draws=400)
  neg = idx[:, 0, 1:].reshape(-1)
  candidates = np.flatnonzero(labels != 0)
  counts = np.bincount(neg, minlength=len(labels))
  assert counts[labels == 0].sum() == 0
  expected = neg.size / len(candidates)
  chi2 = float(np.sum((counts[candidates] - expected) ** 2 / expected))
  dof = len(candidates) - 1
  # Without replacement the counts vary less than multinomial ones: the same bound holds.
  assert chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)


def test_crd_sampler_relax_mode_positive_is_same_class():
  labels = np.repeat(np.arange(4), 10)
  index = np.array([0, 15, 27])
  idx = _sample(labels, index, 8, mode="relax", draws=50)
  np.testing.assert_array_equal(labels[idx[:, :, 0]], np.broadcast_to(labels[index], (50, 3)))
  assert len(set(idx[:, 0, 0])) > 1  # a random example of the class, not always the anchor


def test_crd_init_banks_z_and_tables():
  cfg = lp.config(**{"crd.nce_k": 16})
  method = methods.get("crd", cfg)
  s_out, t_out = parity.outputs("resnet8x4", 0), parity.outputs("resnet32x4", 1)
  labels = np.random.default_rng(0).integers(0, 10, 3000).astype(np.int32)
  params, state = jax.jit(functools.partial(method.init, data_info={
      "num_train": 3000, "num_classes": 10, "train_labels": labels}))(jax.random.key(0), s_out, t_out)
  stdv = 1.0 / np.sqrt(128 / 3)
  for side in ("memory_s", "memory_t"):
    bank = np.asarray(state[side])
    assert bank.shape == (3000, 128) and bank.dtype == np.float32
    assert np.abs(bank).max() <= stdv and np.std(bank) == pytest.approx(stdv / np.sqrt(3), rel=0.01)
  assert not np.array_equal(state["memory_s"], state["memory_t"])
  assert float(state["z_s"]) == -1.0 and float(state["z_t"]) == -1.0
  assert params["embed_s"]["kernel"].shape == (256, 128)
  t = jax.tree.map(np.asarray, state["tables"])
  np.testing.assert_array_equal(t["labels"][t["class_order"]], np.sort(labels))
  np.testing.assert_array_equal(t["class_count"], np.bincount(labels, minlength=10))
  with pytest.raises(UserError, match="only one class"):
    method.init(jax.random.key(0), s_out, t_out, {"num_train": 4, "num_classes": 2,
                                                  "train_labels": np.zeros(4, np.int32)})


def test_crd_finite_at_zero_features():
  """Zero pooled features (dead ReLUs): embeddings are the bias direction; everything finite."""
  _, method, params, state, s_out, t_out, batch = _crd_setup(np.float32, True, seed=30)
  s_out = (s_out[0], jax.tree.map(np.zeros_like, s_out[1]))
  params = jax.tree.map(np.zeros_like, params)  # zero embeddings too: the rsqrt(max(., eps^2)) path
  results = lp.jax_results("crd", method, params, state, s_out, t_out, batch, _CRD_STATE)
  for key, value in results.items():
    assert np.all(np.isfinite(value)), key


def test_config_carries_repdistillers_settings():
  crd_cfg = recipes.load_config_module(os.path.join(ROOT, "configs", "crd_cifar.py"))
  assert len(crd_cfg.PAIRS) == 13 and tables.REPORTED["crd_cifar"]["resnet32x4,resnet8x4"] == 75.51
  c = crd_cfg.get_config("resnet32x4,ShuffleV2")
  assert (c.method, c.model, c.teacher.arch, c.optim.lr) == ("crd", "ShuffleV2", "resnet32x4", 0.01)
  assert (c.crd.ce_weight, c.crd.feat_weight, c.crd.feat_dim, c.crd.nce_k, c.crd.nce_t, c.crd.nce_m,
          c.crd.mode) == (1.0, 0.8, 128, 16384, 0.07, 0.5, "exact")
