"""Shared test setup: quiet TensorFlow, CPU only, the repo root importable, compilations cheap and cached.

Most of the suite's time is XLA:CPU compiling small programs, often the same ones: in each
xdist worker and in every CLI subprocess (a resumed run recompiles what the killed one had).
So every test process compiles with `xla.FAST_COMPILE` (about 2x cheaper, the code it makes
runs slower, which these few-step programs hardly feel), and JAX's persistent compilation cache
in the checkout (`.jax_cache/`, ignored by git) shares what was compiled; the variables are set
before any test imports jax, so the subprocesses inherit them. A cached executable computes the
same bits. Tests marked `optimized` need the build a user's run gets (bit-identity between two
differently structured programs holds for XLA's optimised code, not for every compilation of
it; long float64 curves run faster optimised): each runs alone in a pytest subprocess that
compiles as a user's run does, and its result is the test's.

The CLI splits a CPU into one XLA device per core (`kdjax.main --cpu_devices`); the tests pin
one device, as in-process code has, unless a test asks for more (tests/test_cpu_devices.py
runs the split itself): two xdist workers already occupy the cores.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests import xla  # pylint: disable=wrong-import-position  (needs ROOT on the path, must precede jax)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=1".strip()
_USER_FLAGS = os.environ["XLA_FLAGS"]
OPTIMIZED = os.environ.get(xla.OPTIMIZED_ENV) == "1"
if not OPTIMIZED and xla.FAST_COMPILE not in _USER_FLAGS:
  os.environ["XLA_FLAGS"] = f"{_USER_FLAGS} {xla.FAST_COMPILE}"


def pytest_configure(config):
  config.addinivalue_line("markers", "long: an end-to-end test of a minute or more; run first (see below)")
  config.addinivalue_line("markers", "optimized: runs in a process compiling as a user's run does (above)")


def pytest_collection_modifyitems(config, items):
  """The long tests first, spread over xdist's workers: worksteal hands each of the N workers a
  contiguous 1/N of this list, so each part starts with its share of the long tests (in their
  files' order) and none is left running one alone at the end of the suite."""
  del config
  workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
  long_tests = [item for item in items if item.get_closest_marker("long") is not None]
  short = [item for item in items if item.get_closest_marker("long") is None]
  ordered, left = [], len(items)
  for part in range(workers):
    size = left // (workers - part)  # the share worksteal sends to the part-th idle worker
    mine = long_tests[part::workers]
    ordered += mine + short[:max(size - len(mine), 0)]
    short = short[max(size - len(mine), 0):]
    left -= size
  items[:] = ordered + short


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
  """Runs an `optimized` test in its own pytest process without FAST_COMPILE; its outcome is this one's."""
  if OPTIMIZED or pyfuncitem.get_closest_marker("optimized") is None:
    return None
  flags = _USER_FLAGS.replace(xla.FAST_COMPILE, "").strip()
  env = dict(os.environ, XLA_FLAGS=flags, **{xla.OPTIMIZED_ENV: "1"})
  done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                         pyfuncitem.nodeid], cwd=ROOT, env=env, capture_output=True, text=True)
  if done.returncode != 0:
    pytest.fail(f"in its optimised-XLA process (exit {done.returncode}):\n{done.stdout[-8000:]}{done.stderr[-3000:]}",
                pytrace=False)
  summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
  if "skipped" in summary and "passed" not in summary:
    pytest.skip(f"in its optimised-XLA process: {summary}")
  return True
