"""One real 2-epoch train on mocked CIFAR-100 of each 2022-2024 method config (tiny nets)."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)


def _cli(config, workdir, teachers):
  # 2 epochs of 2 steps (32 mocked images, batch 16), tiny nets; the teacher is trained once.
  return [sys.executable, os.path.join(ROOT, "tests", "mocked_main.py"), f"--config={config}",
          "--config.model=resnet8", "--config.teacher.arch=resnet8", "--config.epochs=2",
          "--config.teacher.train_epochs=1", "--config.batch_size=16", "--config.eval_batch_size=16",
          "--config.teacher.train_batch_size=16", f"--config.teacher.auto_workdir={teachers}/{{arch}}",
          "--config.progress_bar=False", f"--workdir={workdir}"]


def test_each_recent_method_config_trains_two_epochs_on_mocked_cifar(tmp_path):
  env = dict(ENV, KDJAX_MOCK_EXAMPLES="32")
  runs = (("configs/kd_ls_cifar.py", "kd", "train_loss_kd"), ("configs/dist_cifar.py", "dist", "train_loss_inter"),
          ("configs/ctkd_cifar.py", "ctkd", "train_loss_kd"), ("configs/ickd_cifar.py", "ickd", "train_loss_ickd"))
  for config, method, loss_key in runs:
    workdir = str(tmp_path / os.path.basename(config))
    done = subprocess.run(_cli(config, workdir, str(tmp_path / "teachers")), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.load(open(os.path.join(workdir, "results.json")))
    assert results["epochs"] == 2 and results["method"] == method
    metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert len(metrics) == 2 and all(np.isfinite(m[loss_key]) and m[loss_key] > 0 for m in metrics)
    if method == "ctkd":  # the learned temperature, inside (t_start, t_start + t_range)
      assert all(1.0 < m["train_temperature"] < 21.0 for m in metrics)
