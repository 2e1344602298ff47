"""XLA:CPU compilation settings of the test processes (no imports: conftest reads it before jax).

* `FAST_COMPILE`: cheaper compilation (no LLVM optimisation, no fusion emitters). Most of the
  suite's time is compiling small programs that then run a few steps, so every test process
  uses it (tests/conftest.py); it changes compile and run time, not what is computed. The
  compiled code is not bit-for-bit the optimised build's, though, and a few properties are about
  the optimised build (see `OPTIMIZED_ENV`).
* `OPTIMIZED_ENV`: set to 1 in a test process that must compile as a user's run does; tests
  marked `@pytest.mark.optimized` run in such a process (bit-identity across two differently
  structured programs, and long float64 loss curves whose run time dominates).
"""
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                "--xla_cpu_use_fusion_emitters=false")
OPTIMIZED_ENV = "KDJAX_TEST_OPTIMIZED_XLA"
