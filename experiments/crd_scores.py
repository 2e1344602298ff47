"""CRD's two ways to score each anchor against its K+1 bank rows, and its negative sampler's
selection (argsort vs top_k), timed on this machine.

    python experiments/crd_scores.py                    # B = 64, K = 16384, D = 128
    python experiments/crd_scores.py --rows=50000,1281167

`kdjax.methods.crd.contrast_scores` either gathers the (B, K+1, D) rows and contracts them with
the anchors, or multiplies the anchors by the whole (N, D) bank and picks the K+1 scores of each
row: N / (K+1) times the multiply-adds, but no gathered tensor. It takes the product while
N <= crd.DENSE_SCORES_MAX_ROWS_PER_CONTRAST * (K+1). This prints forward + backward (the
gradient with respect to the anchors, as in training) of both, per bank size N, then the
sampler's pick of the K smallest of B x N uniform keys (`crd.smallest_k`, equal to a stable
argsort's first K) against the argsort, for the first N.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from kdjax.methods import crd  # noqa: E402

_ROWS = flags.DEFINE_list("rows", ["50000", "131080", "262144", "524288"], "Bank sizes N.")
_BATCH = flags.DEFINE_integer("batch", 64, "Anchors B.")
_K = flags.DEFINE_integer("k", 16384, "Negatives K.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls (median) after one untimed.")


def _median_ms(f, *args) -> float:
  """Median ms of `--repeats` calls of the compiled `f` (compiled and run once before)."""
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(_REPEATS.value):
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - t0)
  return 1000 * float(np.median(times))


def _time(form: str, e, memory, idx) -> float:
  """Median ms of jit(grad) of sum(sin(scores)) with the scores computed as `form`."""
  threshold = {"gather": 0, "product": 10**12}[form]
  saved, crd.DENSE_SCORES_MAX_ROWS_PER_CONTRAST = crd.DENSE_SCORES_MAX_ROWS_PER_CONTRAST, threshold
  try:
    f = jax.jit(jax.grad(lambda e: jnp.sum(jnp.sin(crd.contrast_scores(memory, idx, e)))))
    f = f.lower(e).compile()  # traced under the threshold set here
  finally:
    crd.DENSE_SCORES_MAX_ROWS_PER_CONTRAST = saved
  return _median_ms(f, e)


def main(argv):
  del argv
  b, k, d = _BATCH.value, _K.value, 128
  device = f"{jax.device_count()} x {jax.devices()[0].platform}"
  print(f"B = {b}, K = {k}, D = {d}; {device}, jax {jax.__version__}; "
        f"kdjax takes the product while N <= {crd.DENSE_SCORES_MAX_ROWS_PER_CONTRAST} (K+1)")
  for n in map(int, _ROWS.value):
    memory = jax.random.normal(jax.random.key(0), (n, d))
    e = jax.random.normal(jax.random.key(1), (b, d))
    idx = jax.random.randint(jax.random.key(2), (b, k + 1), 0, n)
    print(f"N = {n:8d} (N/(K+1) = {n / (k + 1):5.1f}): gather {_time('gather', e, memory, idx):7.1f} ms, "
          f"product {_time('product', e, memory, idx):7.1f} ms (forward + backward)", flush=True)
  n = int(_ROWS.value[0])
  keys = jax.random.uniform(jax.random.key(3), (b, n))
  argsort = jax.jit(lambda x: jnp.argsort(x, axis=1)[:, :k])
  top_k = jax.jit(lambda x: crd.smallest_k(x, k))
  assert np.array_equal(argsort(keys), top_k(keys))
  print(f"sampler, {b} x {n} keys, K = {k}: argsort {_median_ms(argsort, keys):7.1f} ms, "
        f"top_k {_median_ms(top_k, keys):7.1f} ms (the same indices)")


if __name__ == "__main__":
  app.run(main)
