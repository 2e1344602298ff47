"""Where a train step's CPU time goes, kdjax beside PyTorch: `perf` samples per library and symbol.

    python experiments/cpu_profile.py                        # DKD resnet32x4 -> resnet8x4, batch 64
    python experiments/cpu_profile.py --method=vanilla --student=resnet8x4 --profile_steps=20

Builds both steps as experiments/vs_pytorch.py does (same flags, same batch), runs each side's
warm-up untimed, then records `--profile_steps` steps of one side at a time with
`perf record -F <hz> -p <this process>` (Linux `perf`, not a Python dependency). Compilation
and start-up stay out of the samples. Prints, per side, the CPU milliseconds per step spent in
each shared object ([JIT] is generated code: XLA's fused kernels and oneDNN's JIT kernels) and
in the top symbols, so a gap between the two steps can be placed before it is optimised.
CPU ms are samples / hz, so a step that keeps both cores busy shows ~2x its wall time.
"""
from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import jax  # noqa: E402

from kdjax import cpu  # noqa: E402
import vs_pytorch  # noqa: E402  (its flags: --method, --teacher, --student, --batch, --warmup, ...)

_STEPS = flags.DEFINE_integer("profile_steps", 12, "Steps recorded per side.")
_HZ = flags.DEFINE_integer("hz", 999, "perf's sampling frequency per thread.")
_TOP = flags.DEFINE_integer("top", 15, "Symbols listed per side.")


def _record(step, sync, steps: int, hz: int, out: str) -> float:
  """Runs `steps` steps under `perf record` attached to this process; their wall time."""
  perf = subprocess.Popen(["perf", "record", "-q", "-F", str(hz), "-p", str(os.getpid()), "-o", out],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  time.sleep(1.0)  # perf attaches to every thread before the first step
  t0 = time.perf_counter()
  for _ in range(steps):
    result = step()
  sync(result)
  wall = time.perf_counter() - t0
  perf.send_signal(signal.SIGINT)
  perf.wait()
  return wall


def _samples(path: str, key: str) -> collections.Counter:
  """Sample counts per `key` ('dso' or 'sym') from a perf.data file."""
  text = subprocess.run(["perf", "report", "-i", path, "--no-children", "--sort", key, "--stdio",
                         "-F", "sample," + key], capture_output=True, text=True, check=True).stdout
  counts = collections.Counter()
  for line in text.splitlines():
    parts = line.split(None, 1)
    if len(parts) == 2 and parts[0].isdigit():
      counts[parts[1].strip()[:110]] += int(parts[0])
  return counts


def main(argv):
  del argv
  if shutil.which("perf") is None:
    sys.exit("cpu_profile.py needs Linux `perf` on PATH (e.g. `apt-get install linux-perf`).")
  images, labels = vs_pytorch.setup()
  n, method = len(images), vs_pytorch._METHOD.value  # pylint: disable=protected-access
  sides = {"kdjax": (vs_pytorch._kdjax_step(images, labels)[0], jax.block_until_ready),  # pylint: disable=protected-access
           "pytorch": (vs_pytorch._torch_step(images, labels, n)[0],  # pylint: disable=protected-access
                       lambda loss: float(loss.detach()))}
  steps, hz = _STEPS.value, _HZ.value
  print(f"{method}, batch {vs_pytorch._BATCH.value}, float32, {cpu.usable_cores()} CPU cores "
        f"(jax {jax.__version__}, {jax.device_count()} XLA devices); {steps} steps per side, perf at {hz} Hz")
  with tempfile.TemporaryDirectory() as tmp:
    for name, (step, sync) in sides.items():
      for _ in range(vs_pytorch._WARMUP.value):  # pylint: disable=protected-access
        sync(step())
      path = os.path.join(tmp, f"{name}.data")
      wall = _record(step, sync, steps, hz, path)
      if not os.path.exists(path):
        sys.exit("perf recorded nothing: attaching to a process may be forbidden here "
                 "(/proc/sys/kernel/perf_event_paranoid); run as root or lower it.")
      per_step = lambda count: 1000.0 * count / hz / steps  # noqa: E731
      dsos = _samples(path, "dso")
      print(f"\n{name}: {1000 * wall / steps:.1f} ms/step wall, "
            f"{per_step(sum(dsos.values())):.0f} CPU ms/step sampled")
      for dso, count in dsos.most_common(8):
        print(f"  {per_step(count):7.1f} CPU ms  {dso}")
      print("  top symbols:")
      for sym, count in _samples(path, "sym").most_common(_TOP.value):
        print(f"  {per_step(count):7.1f} CPU ms  {sym}")


if __name__ == "__main__":
  app.run(main)
