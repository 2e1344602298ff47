"""The CLI splits a CPU into one XLA device per core (the batch sharded over them), since XLA:CPU
runs large-image convolutions on one core; the choice and a real run with it."""
import json
import os
import subprocess
import sys

import pytest

from kdjax import cpu, recipes
from tests import parity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_as_many_devices_as_cores_that_divide_every_batch_size():
  assert cpu.cpu_devices(0, 2, (64, 0)) == 2
  assert cpu.cpu_devices(0, 4, (64, 96)) == 4
  assert cpu.cpu_devices(0, 3, (64,)) == 2  # 3 does not divide 64
  assert cpu.cpu_devices(0, 8, (64, 6)) == 2  # the teacher's batch of 6 too
  assert cpu.cpu_devices(0, 1, (64,)) == 1
  assert cpu.cpu_devices(3, 2, (64,)) == 3  # asked for: as asked (the trainer refuses an indivisible batch)


def test_the_split_goes_into_xla_flags_unless_they_already_choose():
  config = recipes.base_config()
  env = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
  n = cpu.split_cpu(config, 0, env)
  cores = len(os.sched_getaffinity(0))
  assert n == cpu.cpu_devices(0, cores, (config.batch_size,))
  if n > 1:
    assert env["XLA_FLAGS"] == f"--xla_cpu_enable_fast_math=false {cpu.CPU_DEVICE_FLAG}={n}"
  chosen = {"XLA_FLAGS": f"{cpu.CPU_DEVICE_FLAG}=3"}
  assert cpu.split_cpu(config, 0, chosen) is None and chosen["XLA_FLAGS"] == f"{cpu.CPU_DEVICE_FLAG}=3"
  single = {}
  assert cpu.split_cpu(config, 1, single) == 1 and "XLA_FLAGS" not in single


@pytest.mark.long
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: nothing to split")
def test_the_cli_trains_on_one_device_per_core(tmp_path):
  env = parity.cli_env()
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if cpu.CPU_DEVICE_FLAG not in f)
  workdir = tmp_path / "run"
  done = subprocess.run(
      [sys.executable, "-m", "kdjax.main", "--config=configs/quickstart.py:resnet8,resnet8", f"--workdir={workdir}",
       "--config.epochs=1", "--config.teacher.train_epochs=1", "--config.progress_bar=False",
       f"--config.teacher.auto_workdir={tmp_path}/teacher"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.load(open(workdir / "results.json"))
  n = cpu.cpu_devices(0, len(os.sched_getaffinity(0)), (results["config"]["batch_size"],))
  assert results["devices"] == f"{n} x cpu" and n >= 2
