"""Shared test setup: quiet TensorFlow, CPU only, the repo root importable, compilations cached.

Much of the suite's time is XLA:CPU compiling small programs, often the same ones: in each
xdist worker and in every CLI subprocess (a resumed run recompiles what the killed one had).
JAX's persistent compilation cache in the checkout (`.jax_cache/`, ignored by git) shares
them; the variables are set before any test imports jax, so the subprocesses inherit them.
A cached executable computes the same bits. (XLA's cheaper compilation, `parity.FAST_COMPILE`,
is opted into by the subprocess tests that compile much and run little: unoptimised code
runs several times slower, and some bit-identity properties hold only for optimised code.)

The CLI splits a CPU into one XLA device per core (`kdjax.main --cpu_devices`); the tests pin
one device, as in-process code has, unless a test asks for more (tests/test_cpu_devices.py
runs the split itself): two xdist workers already occupy the cores.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=1".strip()
sys.path.insert(0, ROOT)


def pytest_configure(config):
  config.addinivalue_line("markers", "long: an end-to-end test of a minute or more; run first (see below)")


def pytest_collection_modifyitems(config, items):
  """The long tests first, in their files' order, so that xdist's workers run them side by side
  early instead of one worker finishing the suite alone with a long test at its end."""
  del config
  items.sort(key=lambda item: item.get_closest_marker("long") is None)
