"""Faults a long run meets: damaged checkpoints, a full disk, SIGTERM/SIGINT, kills at random moments."""
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from kdjax import checkpoint
from kdjax.train import loop
from tests import parity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = parity.cli_env()


def _state(seed: int, size: int = 4096):
  """A small replicated pytree standing in for a train state."""
  sharding = NamedSharding(jax.make_mesh((1,), ("data",), devices=jax.devices()[:1]), P())
  rng = np.random.default_rng(seed)
  tree = {"w": rng.normal(size=(size,)).astype(np.float32), "step": np.int32(seed),
          "key": jax.random.key(seed)}
  return jax.device_put(tree, sharding)


def _same(a, b) -> bool:
  a, b = jax.tree.map(lambda x: np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
                                           else x), (a, b))
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _largest_file(directory: str) -> str:
  files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]
  return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, capsys):
  directory = str(tmp_path / "checkpoints")
  ckpts = checkpoint.TrainStateCheckpoints(directory)
  ckpts.save(4, _state(1), {"epochs": [1]})
  ckpts.save(8, _state(2), {"epochs": [1, 2]})
  ckpts.close()
  target = _largest_file(os.path.join(directory, "8", "state"))
  size = os.path.getsize(target)
  with open(target, "r+b") as f:
    if damage == "truncate":
      f.truncate(size // 2)
    else:  # 256 bytes of garbage in the middle, size kept
      f.seek(size // 2 - 128)
      f.write(np.random.default_rng(0).integers(0, 256, 256, dtype=np.uint8).tobytes())
  ckpts = checkpoint.TrainStateCheckpoints(directory)
  state, history = ckpts.restore(_state(0))
  assert _same(state, _state(1)) and history == {"epochs": [1]}
  out = capsys.readouterr().out
  assert f"{directory}/8 is damaged" in out and "resuming from the previous one (4)" in out
  assert os.path.isdir(directory + ".damaged/8") and ckpts.latest_epoch() == 4
  ckpts.save(8, _state(2), {"epochs": [1, 2]})  # the resumed run saves that step again
  ckpts.close()


def test_a_damaged_only_checkpoint_stops_with_the_step_and_the_fix(tmp_path):
  directory = str(tmp_path / "checkpoints")
  ckpts = checkpoint.TrainStateCheckpoints(directory)
  ckpts.save(4, _state(1), {"epochs": [1]})
  target = _largest_file(os.path.join(directory, "4", "state"))
  with open(target, "r+b") as f:
    f.seek(os.path.getsize(target) // 2)
    f.write(b"\xff" * 64)
  with pytest.raises(checkpoint.CheckpointError) as e:
    ckpts.restore(_state(0))
  assert f"{directory}/4 is damaged" in str(e.value) and "no earlier one" in str(e.value)
  assert os.path.isdir(os.path.join(directory, "4"))  # nothing deleted
  ckpts.close()


def test_a_checkpoint_from_before_digests_still_restores(tmp_path):
  """Steps written without a digest (older kdjax) restore unverified."""
  directory = str(tmp_path / "checkpoints")
  ckpts = checkpoint.TrainStateCheckpoints(directory)
  ckpts.save(3, _state(1), {"epochs": [1, 2, 3]})
  ckpts.close()
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.rmtree(os.path.join(directory, "3", checkpoint.DIGEST))
  state, history = checkpoint.TrainStateCheckpoints(directory).restore(_state(0))
  assert _same(state, _state(1)) and history["epochs"] == [1, 2, 3]


def test_a_save_killed_mid_way_leaves_nothing_that_the_resumed_run_trips_over(tmp_path, capfd):
  """The temporary directory of a killed save goes when the run reopens its checkpoints, quietly."""
  directory = str(tmp_path / "checkpoints")
  ckpts = checkpoint.TrainStateCheckpoints(directory)
  ckpts.save(4, _state(1), {"epochs": [1]})
  ckpts.close()
  # What a SIGKILL during the save of step 8 leaves: a half-written temporary directory.
  os.makedirs(os.path.join(directory, "8.orbax-checkpoint-tmp", "state"))
  with open(os.path.join(directory, "8.orbax-checkpoint-tmp", "state", "partial"), "wb") as f:
    f.write(b"\0" * 100)
  capfd.readouterr()
  ckpts = checkpoint.TrainStateCheckpoints(directory)
  assert sorted(os.listdir(directory)) == ["4"] and ckpts.latest_epoch() == 4
  state, _ = ckpts.restore(_state(0))
  ckpts.save(8, _state(2), {"epochs": [1, 2]})
  ckpts.close()
  assert "already exists" not in capfd.readouterr().err
  assert _same(state, _state(1)) and sorted(os.listdir(directory)) == ["4", "8"]


@contextlib.contextmanager
def _small_disk(mount, mib: int):
  """A `mib`-MiB tmpfs at `mount` for the block; the test is skipped where none can be mounted."""
  mount.mkdir()
  made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(mount)], capture_output=True)
  if made.returncode != 0:
    pytest.skip(f"cannot mount a {mib} MiB tmpfs here: {made.stderr.decode().strip()}")
  try:
    yield mount
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_keeps_the_previous_checkpoint_and_leaves_no_partial_save(tmp_path, monkeypatch):
  with _small_disk(tmp_path / "small", 8) as mount:
    directory = str(mount / "checkpoints")
    ckpts = checkpoint.TrainStateCheckpoints(directory)
    ckpts.save(1, _state(1), {"epochs": [1]})
    with pytest.raises(checkpoint.DiskFullError) as e:  # refused before writing: 16 MiB do not fit
      ckpts.save(2, _state(2, size=4 * 1024 * 1024), {"epochs": [1, 2]})
    assert "needs about 16.6 MiB" in str(e.value) and f"{directory}/1) is intact" in str(e.value)
    # Space that runs out during the write (another writer took it): ENOSPC, caught the same way.
    monkeypatch.setattr(checkpoint, "check_space", lambda *args: None)
    with pytest.raises(checkpoint.DiskFullError) as e:
      ckpts.save(2, _state(2, size=4 * 1024 * 1024), {"epochs": [1, 2]})
    assert "no space left" in str(e.value) and f"{directory}/1) is intact" in str(e.value)
    assert not [n for n in os.listdir(directory) if "tmp" in n]
    ckpts.close()
    state, _ = checkpoint.TrainStateCheckpoints(directory).restore(_state(0))
    assert _same(state, _state(1))


def test_the_metrics_log_follows_the_restored_history(tmp_path):
  writer = loop.Writer(str(tmp_path))
  for epoch in (1, 2, 3):
    writer.epoch(epoch, {"epoch": epoch, "test_top1": float(epoch)}, [float(epoch)])
  writer.sync([{"epoch": 1, "test_top1": 1.0}, {"epoch": 2, "test_top1": 2.0}])  # the checkpoint had 2
  writer.epoch(3, {"epoch": 3, "test_top1": 3.0}, [3.0])
  writer.close()
  assert [json.loads(l)["epoch"] for l in open(tmp_path / "metrics.jsonl")] == [1, 2, 3]


# ------------------------------------------------------------------- the CLI, killed

def _args(workdir: str, teacher: str) -> list[str]:
  return [sys.executable, "-m", "kdjax.main", "--config=configs/tiny_cnn_cifar10.py:kd_t4",
          "--config.data.name=digits", "--config.epochs=3", "--config.teacher.train_epochs=1",
          "--config.batch_size=32", "--config.progress_bar=False", "--config.log_every_steps=5",
          f"--config.teacher.auto_workdir={teacher}", f"--workdir={workdir}"]


def _final(workdir: str):
  variables, _ = checkpoint.load_model(workdir)
  timing = ("seconds", "train_images_per_second")
  log = [{k: v for k, v in json.loads(l).items() if k not in timing}
         for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return variables, log


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """(workdir, teacher workdir) of one run never stopped (its teacher trained on the way)."""
  root = tmp_path_factory.mktemp("uninterrupted")
  a, teacher = str(root / "a"), str(root / "teacher")
  done = subprocess.run(_args(a, teacher), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return a, teacher


def test_a_full_disk_during_a_run_ends_in_one_line_and_leaves_no_partial_files(tmp_path, uninterrupted):
  """A 4 MiB workdir holds the first epoch's checkpoint and best model (about 3 MiB), not the second."""
  with _small_disk(tmp_path / "small", 4) as mount:
    full = subprocess.run(_args(str(mount / "run"), uninterrupted[1]), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert full.returncode == 2, full.stderr[-3000:]
    assert "Traceback" not in full.stderr and len(full.stderr.strip().splitlines()) == 1, full.stderr[-3000:]
    assert "space" in full.stderr and "rerun the same command" in full.stderr.lower()
    names = [n for _, ds, fs in os.walk(mount) for n in ds + fs]
    assert not [n for n in names if "orbax-checkpoint-tmp" in n], names
    steps = [int(n) for n in os.listdir(mount / "run" / "checkpoints") if n.isdigit()]
    assert steps, "the first epoch's checkpoint is kept"


@pytest.mark.long
def test_sigterm_and_sigint_checkpoint_mid_epoch_and_random_kills_resume_bit_identically(tmp_path, uninterrupted):
  """One uninterrupted run; then the same run stopped by SIGTERM, SIGINT and SIGKILL at random moments
  (startup, steps, evaluation, checkpoint saves, export) and resumed each time: the final model and
  metrics.jsonl are identical."""
  a, teacher = uninterrupted
  b = str(tmp_path / "b")

  rng = random.Random(0)
  stopped_mid_epoch = False
  for attempt, sig in enumerate([signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGKILL, signal.SIGTERM]):
    proc = subprocess.Popen(_args(b, teacher), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # Startup (imports, compilation) takes most of a run this small: the random moment is counted
    # from the line the run prints before its first step (the teacher's accuracy, or where it resumed).
    for line in proc.stdout:
      if "teacher(s)" in line or "resumed from" in line:
        break
    # The first SIGTERM lands at once, so the run stops after the first step of epoch 1 whatever
    # this machine's speed (mid-epoch resume is always exercised); the later signals at random.
    time.sleep(0.0 if attempt == 0 else rng.uniform(2.0, 12.0))
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    if proc.returncode == 0 or os.path.exists(os.path.join(b, "results.json")):
      break  # finished before the signal (or it landed while the finished process was exiting)
    if sig == signal.SIGKILL:
      assert proc.returncode == -signal.SIGKILL
      continue
    # The step in flight finishes, a checkpoint is written, one message says where and how to resume.
    assert proc.returncode == 128 + sig, (attempt, proc.returncode, err[-3000:])
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-3000:]
    assert f"{signal.Signals(sig).name}: stopped" in err and "Rerun the same command" in err
    stopped_mid_epoch |= " of epoch " in err
  resumed = subprocess.run(_args(b, teacher), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert stopped_mid_epoch, "no signal landed inside an epoch: the test did not exercise mid-epoch resume"
  (va, log_a), (vb, log_b) = _final(a), _final(b)
  assert _same(va, vb)
  assert log_a == log_b and [r["epoch"] for r in log_b] == [1, 2, 3]


def test_the_traceback_flag_shows_what_the_one_line_message_hides(tmp_path):
  args = [sys.executable, "-m", "kdjax.main", "--config=configs/quickstart.py", "--config.model=resnet9",
          f"--workdir={tmp_path / 'run'}"]
  plain = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert plain.returncode == 2 and plain.stderr.strip().splitlines() == [
      line for line in plain.stderr.strip().splitlines() if line.startswith("kdjax: error: unknown model")]
  debug = subprocess.run(args + ["--traceback"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr
  assert "kdjax.errors.UserError: unknown model 'resnet9'" in debug.stderr
