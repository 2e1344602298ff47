"""One real 2-epoch train on mocked CIFAR-100 of each 2021-2024 method config (tiny nets).

In-process (`train_and_evaluate` under `tfds.testing.mock_data`): the CLI around it is
tested elsewhere, and a subprocess per method would pay the imports each time. Each
worker trains the resnet8 teacher once; the methods are separate cases so xdist spreads them.
"""
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kdjax import checkpoint, models, recipes, train

# (config, its argument, the method that runs, a loss it logs)
RUNS = {
    "kd_ls": ("configs/kd_ls_cifar.py", "", "kd", "train_loss_kd"),
    "dist": ("configs/dist_cifar.py", "", "dist", "train_loss_inter"),
    "ctkd": ("configs/ctkd_cifar.py", "", "ctkd", "train_loss_kd"),
    "ickd": ("configs/ickd_cifar.py", "", "ickd", "train_loss_ickd"),
    "dot": ("configs/dot_cifar.py", "", "dot", "train_loss_kd"),
    "dot_dkd": ("configs/dot_cifar.py", "resnet32x4,resnet8x4,dkd", "dot", "train_loss_dkd"),
    "srd": ("configs/srd_cifar.py", "", "srd", "train_loss_srd_logit"),
    "simkd": ("configs/simkd_cifar.py", "", "simkd", "train_loss_simkd"),
    "wkd_lf": ("configs/wkd_cifar.py", "resnet32x4,resnet8x4,lf", "wkd", "train_loss_wkd_feat"),
    "mlkd": ("configs/mlkd_cifar.py", "", "mlkd", "train_loss_bc"),
    "sskd": ("configs/sskd_cifar.py", "", "sskd", "train_loss_ss"),
    "tfkd_self": ("configs/tfkd_cifar.py", "", "tfkd", "train_loss_tfkd"),
    "tfkd_reg": ("configs/tfkd_cifar.py", "resnet8x4,resnet8x4,reg", "tfkd", "train_loss_tfkd"),
}


def _config(name: str, teachers: str):
  path, arg, _, _ = RUNS[name]
  c = recipes.load_config_module(path).get_config(arg or None)
  # 2 epochs of 2 steps (32 mocked images, batch 16), tiny nets; the teacher is trained once.
  c.model = "resnet8"
  c.teacher.arch = "resnet8" if c.teacher.arch else ""  # Tf-KD_reg has no teacher
  c.epochs, c.teacher.train_epochs = 2, 1
  c.batch_size = c.eval_batch_size = c.teacher.train_batch_size = 16
  c.teacher.auto_workdir = f"{teachers}/{{arch}}"
  c.progress_bar = False
  c.sskd.t_epochs = 1  # SSKD's prestage of the teacher's head: one epoch here, not 60
  return c


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
  """This worker's teachers directory (filled by the first run that needs the resnet8 teacher)."""
  return str(tmp_path_factory.mktemp("teachers"))


@pytest.mark.long
@pytest.mark.parametrize("name", sorted(RUNS))
def test_recent_method_config_trains_two_epochs_on_mocked_cifar(name, teachers, tmp_path):
  workdir = str(tmp_path / name)
  with tfds.testing.mock_data(num_examples=32):
    train.train_and_evaluate(_config(name, teachers), workdir)
  _, _, method, loss_key = RUNS[name]
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results["epochs"] == 2 and results["method"] == method
  metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert len(metrics) == 2 and all(np.isfinite(m[loss_key]) and m[loss_key] > 0 for m in metrics)
  if name == "sskd":  # the teacher head's prestage ran first, in its own directory
    assert os.path.exists(os.path.join(workdir, "prestage", "metrics.jsonl"))
  if name == "ctkd":  # the learned temperature, inside (t_start, t_start + t_range)
    assert all(1.0 < m["train_temperature"] < 21.0 for m in metrics)
  if name == "simkd":  # evaluated and exported as it predicts: with its projector and the teacher's classifier
    variables, meta = checkpoint.load_model(workdir)
    assert meta["arch"] == "simkd(resnet8,channels=64,hw=8,factor=2)" and set(variables["params"]) == {
        "student", "transfer", "cls_t"}
    model = models.get(meta["arch"], num_classes=meta["num_classes"])
    logits, _ = model.apply(variables, np.zeros((2, 32, 32, 3), np.float32), train=False)
    assert logits.shape == (2, 100) and np.all(np.isfinite(logits))
    assert checkpoint.load_model(os.path.join(workdir, "best"))[1]["arch"] == meta["arch"]
