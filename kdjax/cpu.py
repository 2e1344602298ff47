"""How kdjax runs on a CPU: one XLA device per core, and convolutions compiled by Eigen.

XLA:CPU runs the large-image convolutions of the CIFAR nets (32x32 maps, 32-64 channels) on a
single core: the same time on one core as on two (experiments/conv_layers.py, benchmarks.md),
while PyTorch's oneDNN uses every core. Splitting the CPU into several XLA devices, the batch
sharded over them like over GPUs (the trainer's data-parallel mesh), keeps every core busy:
the DKD resnet32x4 -> resnet8x4 step went from 0.60x to 0.83-0.87x PyTorch's speed on 2 cores.
The command line applies it (`--cpu_devices`); code that imports JAX itself sets XLA_FLAGS
the same way before its first JAX call. GPU and TPU runs are unaffected: the flag shapes the
CPU client only.

The train step is compiled with `compiler_options(platform)` (below): on the CPU its
convolutions go to XLA's Eigen runtime rather than YNNPACK (the single-core convolutions above
are YNNPACK's), whose weight gradients were the slowest part of a CIFAR step. Eigen uses every
core, and the split still pays: DKD step 946-1023 ms on 2 devices, 1067 ms on one, 1100 ms on 4
(2026-12-07). bfloat16 steps leave elementwise ops out of YNNPACK (`CPU_BF16_COMPILER_OPTIONS`).
"""
from __future__ import annotations

import os
from typing import Iterable, MutableMapping, Optional

CPU_DEVICE_FLAG = "--xla_force_host_platform_device_count"
YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# XLA:CPU hands dots, elementwise ops and reductions to YNNPACK but leaves convolutions to its
# Eigen runtime. jax 0.10.2's default sends convolutions to YNNPACK too, whose weight gradients
# ran 1.5-4x slower than Eigen's on 2 cores (32x32, 64 -> 64 at batch 64: 145 vs 38 ms) and its
# 32x32 forward on one core (36 vs 19 ms; experiments/conv_layers.py): the resnet8x4 train step
# went from 590 to 395 ms, DKD resnet32x4 -> resnet8x4 from ~1140 to ~960 ms with teacher_first
# (experiments/vs_pytorch.py, benchmarks.md). Changes results by float32 rounding only.
# One graph kdjax does not build (eval BatchNorm folded into one multiply-add) made XLA:CPU abort
# with heap corruption under this set (benchmarks.md, 2026-12-07); XLA_FLAGS overrides it.
CPU_COMPILER_OPTIONS = {YNN_FUSION_OPTION: "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE,"
                                           "LIBRARY_FUSION_TYPE_REDUCE"}
# bfloat16 steps leave elementwise ops out of YNNPACK: with them XLA fuses a bfloat16 teacher's
# whole eval forward (its convolutions run as float32 between converts) into one YNNPACK fusion,
# and on 2 XLA devices that corrupted the heap (glibc `malloc assertion failure`, or a segfault)
# in 9 of 14 runs of resnet32x4's forward and 3 of 5 of a KD step; without it, 0 of 8 and 0 of 4
# (benchmarks.md, 2026-12-07, session 5). No float32 graph of kdjax's has aborted, CIFAR ResNet50's
# 42-convolution YNNPACK fusion included, so float32 steps keep the faster set.
CPU_BF16_COMPILER_OPTIONS = {YNN_FUSION_OPTION: "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def usable_cores() -> int:
  """The cores this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_devices(requested: int, cores: int, batch_sizes: Iterable[int]) -> int:
  """How many XLA devices to split the CPU into: `requested`, or (0) the most, up to `cores`,
  that divide every batch size of the run (0s are ignored)."""
  if requested > 0:
    return requested
  sizes = [b for b in batch_sizes if b > 0]
  return max(n for n in range(1, max(cores, 1) + 1) if all(b % n == 0 for b in sizes))


def split_cpu(config, requested: int = 0, env: Optional[MutableMapping[str, str]] = None) -> Optional[int]:
  """Adds the device count to XLA_FLAGS for `config`'s batch sizes (call before JAX starts a
  backend); the count, or None where XLA_FLAGS already sets one."""
  env = os.environ if env is None else env
  if CPU_DEVICE_FLAG in env.get("XLA_FLAGS", ""):
    return None
  n = cpu_devices(requested, usable_cores(), (config.batch_size, config.teacher.train_batch_size))
  if n > 1:
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {CPU_DEVICE_FLAG}={n}".strip()
  return n


def compiler_options(platform: str, env: Optional[MutableMapping[str, str]] = None, *,
                     dtype: str = "float32") -> Optional[dict]:
  """XLA options for compiling a train step of compute `dtype` on `platform`: on the CPU
  `CPU_COMPILER_OPTIONS` (`CPU_BF16_COMPILER_OPTIONS` for bfloat16) unless XLA_FLAGS sets the
  YNNPACK fusion itself; None (XLA's defaults) elsewhere."""
  env = os.environ if env is None else env
  if platform != "cpu" or YNN_FUSION_OPTION in env.get("XLA_FLAGS", ""):
    return None
  return dict(CPU_BF16_COMPILER_OPTIONS if dtype == "bfloat16" else CPU_COMPILER_OPTIONS)
