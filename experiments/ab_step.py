"""Builds of kdjax's train step against each other and PyTorch, in rotated rounds: an A/B.

    python experiments/ab_step.py                                  # kdjax's build vs PyTorch
    python experiments/ab_step.py --variants='{"no_teacher_first": {"spec": {"teacher_first": false}},
        "ynn_no_eltwise": {"xla": {"xla_cpu_experimental_ynn_fusion_type":
                                   "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}}}'

These machines are noisy (the same step drifts 5-10% between runs), so a change worth 3-5%
shows only when its builds run in one process, interleaved: every variant is compiled once,
then each round runs every build for `--steps` steps, in an order rotated from round to round,
and PyTorch's step (experiments/vs_pytorch.py's, same method and flags) last. Prints each
build's median round, its ratio to PyTorch's median, and the process CPU time (user, system)
and minor page faults per step measured over its rounds.

A variant is `{"xla": {option: value}, "spec": {field: value}}`: XLA options merged over
`kdjax.cpu.CPU_COMPILER_OPTIONS` and `StepSpec` fields (e.g. `teacher_first`) overriding what
the trainer sets; both are applied while that variant is built through `train.build`, exactly
as the command line would build it otherwise. "kdjax" (no overrides) is always measured.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from kdjax import cpu  # noqa: E402
from kdjax.train import pipeline, step as step_lib  # noqa: E402
import vs_pytorch  # noqa: E402  (its flags: --method, --teacher, --student, --batch, --rounds, ...)

_VARIANTS = flags.DEFINE_string("variants", "{}", "JSON: name -> {'xla': {...}, 'spec': {...}}.")


def _build(variant: dict, images: np.ndarray, labels: np.ndarray):
  """vs_pytorch's compiled kdjax step, built with `variant`'s XLA options and StepSpec fields."""
  options, step_spec = dict(cpu.CPU_COMPILER_OPTIONS), step_lib.step_spec
  overrides = variant.get("spec", {})
  try:
    cpu.CPU_COMPILER_OPTIONS.update(variant.get("xla", {}))
    pipeline.step_lib.step_spec = lambda *a, **kw: step_spec(*a, **{**kw, **overrides})
    step, _ = vs_pytorch._kdjax_step(images, labels)  # pylint: disable=protected-access
  finally:
    cpu.CPU_COMPILER_OPTIONS.clear()
    cpu.CPU_COMPILER_OPTIONS.update(options)
    pipeline.step_lib.step_spec = step_spec
  return step


def _timed(step, n: int, sync) -> tuple[float, float, float, float]:
  """(wall, user CPU, system CPU) seconds per step and minor page faults per step over n steps."""
  r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  for _ in range(n):
    out = step()
  sync(out)
  t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
  return ((t1 - t0) / n, (r1.ru_utime - r0.ru_utime) / n, (r1.ru_stime - r0.ru_stime) / n,
          (r1.ru_minflt - r0.ru_minflt) / n)


def main(argv):
  del argv
  images, labels = vs_pytorch.setup()
  n = len(images)
  variants = {"kdjax": {}, **json.loads(_VARIANTS.value)}
  batch = vs_pytorch._BATCH.value  # pylint: disable=protected-access
  steps = {name: (_build(v, images, labels), jax.block_until_ready) for name, v in variants.items()}
  torch_step, threads = vs_pytorch._torch_step(images, labels, n)  # pylint: disable=protected-access
  steps["pytorch"] = (torch_step, lambda loss: float(loss.detach()))
  warmup, rounds, k = (vs_pytorch._WARMUP.value, vs_pytorch._ROUNDS.value,  # pylint: disable=protected-access
                       vs_pytorch._STEPS.value)  # pylint: disable=protected-access
  for step, sync in steps.values():
    _timed(step, warmup, sync)
  names = [name for name in steps if name != "pytorch"]
  samples = {name: [] for name in steps}
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)] + ["pytorch"]:
      step, sync = steps[name]
      samples[name].append(_timed(step, k, sync))
  torch_wall = float(np.median([s[0] for s in samples["pytorch"]]))
  print(f"{vs_pytorch._METHOD.value}, batch {batch}, float32, {cpu.usable_cores()} CPU cores "  # pylint: disable=protected-access
        f"(jax {jax.__version__}, {jax.device_count()} XLA devices; torch threads {threads}); "
        f"{rounds} rounds of {k} steps")
  for name, s in samples.items():
    wall, user, system, faults = (float(np.median([x[i] for x in s])) for i in range(4))
    print(f"{name:18s} {1000 * wall:7.1f} ms/step  ratio vs pytorch {torch_wall / wall:.3f}  "
          f"cpu user {1000 * user:6.0f} ms, sys {1000 * system:4.0f} ms, {faults:6.0f} page faults/step  "
          f"(rounds: {' '.join(f'{1000 * x[0]:.0f}' for x in s)})")


if __name__ == "__main__":
  app.run(main)
