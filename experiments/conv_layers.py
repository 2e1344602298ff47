"""Where a CIFAR step's time goes on this backend: each 3x3 convolution shape of resnet32x4 / resnet8x4,
XLA against PyTorch, forward and both gradients, at batch 64 (NHWC for XLA, NCHW for PyTorch).

    python experiments/conv_layers.py                 # all cores
    taskset -c 0 python experiments/conv_layers.py    # one core: which XLA convolutions use several

Prints one line per shape: XLA forward / input gradient / weight gradient as XLA builds them by
default and as kdjax's train step builds them on a CPU (`kdjax.cpu.CPU_COMPILER_OPTIONS`:
convolutions by Eigen, not YNNPACK), PyTorch forward and forward + both gradients (ms, median of
`--runs`), and the forward's GFLOP/s on each side. `--xla_force_host_platform_device_count=2`
in XLA_FLAGS does not split these single-device programs.
torch is optional here (requirements-test.txt); without it only XLA's columns are printed.
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

from kdjax import cpu  # noqa: E402

_BATCH = flags.DEFINE_integer("batch", 64, "Batch size.")
_RUNS = flags.DEFINE_integer("runs", 8, "Timed runs per measurement (median).")
# (spatial size, input channels, output channels) of the 3x3 stride-1 convolutions in resnet32x4.
SHAPES = ((32, 3, 32), (32, 32, 64), (32, 64, 64), (16, 128, 128), (8, 256, 256))


def _median_ms(fn) -> float:
  fn()
  times = []
  for _ in range(_RUNS.value):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return 1000 * float(np.median(times))


def _xla(h: int, ci: int, co: int, options) -> tuple[float, float, float]:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((_BATCH.value, h, h, ci), np.float32))
  w = jnp.asarray(0.05 * rng.standard_normal((3, 3, ci, co), np.float32))
  dy = jnp.ones((_BATCH.value, h, h, co), jnp.float32)
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  fwd = jax.jit(conv, compiler_options=options)
  dx = jax.jit(lambda x, w, dy: jax.vjp(conv, x, w)[1](dy)[0], compiler_options=options)
  dw = jax.jit(lambda x, w, dy: jax.vjp(conv, x, w)[1](dy)[1], compiler_options=options)
  return (_median_ms(lambda: jax.block_until_ready(fwd(x, w))),
          _median_ms(lambda: jax.block_until_ready(dx(x, w, dy))),
          _median_ms(lambda: jax.block_until_ready(dw(x, w, dy))))


def _torch(h: int, ci: int, co: int):
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  x = torch.randn(_BATCH.value, ci, h, h, requires_grad=True)
  conv = torch.nn.Conv2d(ci, co, 3, padding=1, bias=False)
  dy = torch.ones(_BATCH.value, co, h, h)

  def forward():
    with torch.no_grad():
      conv(x)

  return (_median_ms(forward),
          _median_ms(lambda: torch.autograd.grad(conv(x), (x, conv.weight), dy)), torch.get_num_threads())


def main(argv):
  del argv
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, batch {_BATCH.value}, ms (median of "
        f"{_RUNS.value})")
  for h, ci, co in SHAPES:
    gflop = 2 * _BATCH.value * h * h * ci * co * 9 / 1e9
    fwd, dx, dw = _xla(h, ci, co, None)
    ours = _xla(h, ci, co, cpu.compiler_options(jax.default_backend()))
    line = (f"{h}x{h} {ci:>3} -> {co:<3}  XLA fwd {fwd:6.1f}  dx {dx:6.1f}  dw {dw:6.1f}  "
            f"({gflop / fwd * 1e3:4.0f} GFLOP/s)  kdjax build: fwd {ours[0]:6.1f}  dx {ours[1]:6.1f}  "
            f"dw {ours[2]:6.1f}")
    ref = _torch(h, ci, co)
    if ref is not None:
      line += (f"  |  PyTorch fwd {ref[0]:6.1f}  fwd+bwd {ref[1]:6.1f}  ({gflop / ref[0] * 1e3:4.0f} GFLOP/s, "
               f"{ref[2]} threads)")
    print(line, flush=True)


if __name__ == "__main__":
  app.run(main)
