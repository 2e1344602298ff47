"""`data_parallel.per_device_rows`: row-wise work split over the step's devices, results unchanged."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import data_parallel
from tests import parity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smallest(keys):
  return jax.lax.top_k(-keys, 5)[1]


def test_without_a_multi_device_mesh_it_is_the_function_itself():
  keys = jax.random.uniform(jax.random.key(0), (4, 30))
  expected = np.argsort(np.asarray(keys), axis=1, kind="stable")[:, :5]
  np.testing.assert_array_equal(jax.jit(data_parallel.per_device_rows(_smallest))(keys), expected)
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))

  def under_mesh(k):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return data_parallel.per_device_rows(_smallest)(k)

  np.testing.assert_array_equal(jax.jit(under_mesh)(keys), expected)


_TWO_DEVICES = textwrap.dedent("""
    import json, re
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from kdjax import data, data_parallel, recipes, train
    from kdjax.methods import base

    assert jax.device_count() == 2
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows = NamedSharding(mesh, P("data"))
    smallest = lambda k: jax.lax.top_k(-k, 7)[1]
    # (rows, k) of each TopK's values: the first shape on its line of the compiled HLO.
    topk_shapes = lambda hlo: [list(re.search(r"f32\\[(\\d+),(\\d+)\\]", line).groups())
                               for line in hlo.splitlines() if 'custom_call_target="TopK"' in line]
    out = {}

    def under_mesh(fn):
      def traced(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
          return fn(*args)
      return traced

    keys = jax.device_put(jax.random.uniform(jax.random.key(0), (8, 40)), rows)
    expected = np.argsort(np.asarray(keys), axis=1, kind="stable")[:, :7]
    for name, fn in [("plain", smallest), ("split", data_parallel.per_device_rows(smallest))]:
      f = jax.jit(under_mesh(fn))
      out[name] = {"equal": bool(np.array_equal(f(keys), expected)),
                   "topk": topk_shapes(f.lower(keys).compile().as_text())}
    seeds = jax.device_put(jnp.stack([keys, keys[::-1]]), NamedSharding(mesh, P(None, "data")))
    f = jax.jit(under_mesh(jax.vmap(data_parallel.per_device_rows(smallest))))
    out["vmap_equal"] = bool(np.array_equal(f(seeds), np.stack([expected, expected[::-1]])))

    # A train step enters its mesh: a method's split TopK runs on each device's rows of the batch.
    def loss(params, state, student_out, teacher_out, batch, progress):
      k = jax.random.uniform(batch["rng"], (batch["label"].shape[0], 40))
      picked = data_parallel.per_device_rows(smallest)(k)
      ce = base.cross_entropy(student_out[0], batch["label"])
      return ce + 0.0 * jnp.sum(picked), {}, state
    method = base.Method(name="t", needs_teacher=False, loss=loss)
    config = recipes.base_config()
    config.method, config.model, config.data.name = "t", "simple_cnn_student", "digits"
    config.batch_size, config.eval_batch_size = 16, 16
    dataset = data.load("digits")
    run = train.build(config, dataset, train.make_mesh(jax.devices()), method=method)
    rep = NamedSharding(run.state.step.sharding.mesh, P())
    args = (run.teacher_vars, jax.device_put(dataset.train_images, rep),
            jax.device_put(dataset.train_labels, rep), run.permute(jax.random.key(0)))
    out["step_topk"] = topk_shapes(run.train_step.lower(run.state, *args).compile().as_text())
    print("RESULT", json.dumps(out))
""")


def test_split_over_two_devices_runs_each_devices_rows_with_unchanged_results():
  """XLA alone runs TopK on every row on each device; split, each device takes its half."""
  env = parity.cli_env()
  env["XLA_FLAGS"] = " ".join([f for f in env.get("XLA_FLAGS", "").split()
                               if "device_count" not in f] + ["--xla_force_host_platform_device_count=2"])
  done = subprocess.run([sys.executable, "-c", _TWO_DEVICES], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads(done.stdout.split("RESULT", 1)[1])
  assert out["plain"] == {"equal": True, "topk": [["8", "7"]]}  # (rows, k): every row, XLA by itself
  assert out["split"] == {"equal": True, "topk": [["4", "7"]]}
  assert out["vmap_equal"]
  assert out["step_topk"] == [["8", "7"]]  # 8 of the batch of 16
