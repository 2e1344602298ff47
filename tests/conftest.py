"""Shared test setup: quiet TensorFlow, CPU only, the repo root importable, compilations cached.

Much of the suite's time is XLA:CPU compiling small programs, often the same ones: in each
xdist worker and in every CLI subprocess (a resumed run recompiles what the killed one had).
JAX's persistent compilation cache in the checkout (`.jax_cache/`, ignored by git) shares
them; the variables are set before any test imports jax, so the subprocesses inherit them.
A cached executable computes the same bits. (XLA's cheaper compilation, `parity.FAST_COMPILE`,
is opted into by the subprocess tests that compile much and run little: unoptimised code
runs several times slower, and some bit-identity properties hold only for optimised code.)
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
sys.path.insert(0, ROOT)
