"""LAPACK calls inside a jitted step on the CPU: ordered so that they cannot deadlock (issue 16).

jaxlib 0.10's CPU decompositions block a thread of XLA's intra-op pool until their batch
pieces, queued on the same pool, are done; as many concurrent decompositions as the pool
has threads deadlock the program (kdjax/linalg.py). Measured before the fix on the 2-core
CI machine: the KDSVD loop below hung in 3 of 3 runs (at iteration 0, 10 and 20), four
concurrent Cholesky factorisations of 256x256 batches hung within 100 iterations.
The structural tests read the compiled program; the loop runs in a subprocess under a
timeout so that a hang fails the test instead of stalling the suite. KDSVD's real train
steps through the CLI: tests/test_crd_ofd_kdsvd.py::test_mocked_cli_two_epochs.
"""
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import linalg
from kdjax.methods import kdsvd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
# resnet8x4's stage 1-3 outputs (NHWC), the shapes the issue's report used.
KDSVD_SHAPES = [(8, 32, 32, 64), (8, 16, 16, 128), (8, 8, 8, 256)]


def _lapack_calls_ordered(hlo: str) -> tuple[int, bool]:
  """(number of LAPACK custom calls, whether each pair is ordered by a data dependency)."""
  entry = hlo[hlo.index("ENTRY"):]
  entry = entry[:entry.index("\n}")]
  operands, lapack = {}, []
  for line in entry.splitlines()[1:]:
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .*?\b[\w\-]+\((.*)", line)
    if not m:
      continue
    name, rest = m.groups()
    operands[name] = set(re.findall(r"%([\w.\-]+)", rest.split(" calls=")[0]))
    if 'custom_call_target="lapack_' in line:
      lapack.append(name)
  assert sum('custom_call_target="lapack_' in l for l in hlo.splitlines()) == len(lapack), \
      "a LAPACK call outside the entry computation: extend this check"

  def ancestors(name, seen):
    for op in operands.get(name, ()):
      if op not in seen:
        seen.add(op)
        ancestors(op, seen)
    return seen

  ups = {n: ancestors(n, set()) for n in lapack}
  ordered = all(a in ups[b] or b in ups[a] for i, a in enumerate(lapack) for b in lapack[i + 1:])
  return len(lapack), ordered


def _cholesky_program(chained: bool):
  def program(xs):
    total, dep = 0.0, None
    for x in xs:
      g = x @ jnp.swapaxes(x, -1, -2) + x.shape[-1] * jnp.eye(x.shape[-1])
      r = jnp.linalg.cholesky(linalg.after(g, dep) if chained else g)
      dep, total = r, total + jnp.sum(r)
    return total
  return jax.jit(program)


def test_after_orders_otherwise_independent_decompositions():
  xs = [jnp.zeros((2, n, n)) for n in (8, 6, 4, 5)]
  assert _lapack_calls_ordered(_cholesky_program(False).lower(xs).compile().as_text()) == (4, False)
  assert _lapack_calls_ordered(_cholesky_program(True).lower(xs).compile().as_text()) == (4, True)


def test_kdsvd_train_step_runs_its_svds_one_at_a_time():
  """The six SVDs (teacher and student, three stages) of KDSVD's loss and gradient, chained."""
  gs = [jnp.zeros(s) for s in KDSVD_SHAPES]
  step = jax.jit(jax.value_and_grad(lambda a, b: kdsvd.kdsvd_loss(a, b, 1)))
  assert _lapack_calls_ordered(step.lower(gs, gs).compile().as_text()) == (6, True)


def test_after_is_the_identity_in_value_and_gradient():
  x = jnp.asarray([[1.5, -2.0], [np.nan, np.inf]])
  for dep in (jnp.ones(3), jnp.full((2, 2), np.nan), jnp.asarray([np.inf])):
    y = jax.jit(linalg.after)(x, dep)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))  # NaN == NaN here
  w = jnp.asarray([[3.0, 4.0], [5.0, 6.0]])
  gx, gd = jax.grad(lambda x, d: jnp.sum(w * linalg.after(x, d)), argnums=(0, 1))(w, jnp.ones(3))
  np.testing.assert_array_equal(gx, w)
  np.testing.assert_array_equal(gd, 0.0)
  assert linalg.after(x, None) is x


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_after_adds_nothing_off_the_cpu(platform):
  """GPU and TPU decompositions do not wait on a host thread pool: XLA may overlap them."""
  f = jax.jit(linalg.after)
  text = f.trace(jnp.ones((4, 4)), jnp.ones(3)).lower(lowering_platforms=(platform,)).as_text()
  assert "multiply" not in text and "compare" not in text
  cpu = f.trace(jnp.ones((4, 4)), jnp.ones(3)).lower(lowering_platforms=("cpu",)).as_text()
  assert "multiply" in cpu


_LOOP = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
from kdjax.methods import kdsvd
shapes, iterations = json.loads(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
f = jax.jit(jax.value_and_grad(lambda a, b: kdsvd.kdsvd_loss(a, b, 1)))
values = []
for i in range(iterations):
  gs = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]
  gt = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]
  v, g = f(gs, gt)
  jax.block_until_ready(g)
  values.append(float(v))
print(json.dumps(values))
"""


@pytest.mark.long
def test_jitted_kdsvd_loop_does_not_hang():
  """The issue's reproduction, 100 iterations (15 s on 2 idle cores, 98 s beside the rest of the suite)."""
  try:
    result = subprocess.run([sys.executable, "-c", _LOOP, json.dumps(KDSVD_SHAPES), "100"],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=420)
  except subprocess.TimeoutExpired:
    pytest.fail("the jitted KDSVD loss and gradient hung (LAPACK deadlock, kdjax/linalg.py)")
  assert result.returncode == 0, result.stderr[-3000:]
  values = json.loads(result.stdout.strip().splitlines()[-1])
  assert len(values) == 100 and np.all(np.isfinite(values))

