"""Faults a run meets before it trains: an unusable workdir, a resume with another config, and a
teacher checkpoint whose weights contradict its meta.json (issue 13, items 1, 3 and 7)."""
import json
import os

import jax
import jax.numpy as jnp
import pytest

from kdjax import checkpoint, data, models, recipes, train
from kdjax.errors import UserError
from kdjax.train import workdir as workdir_lib


def _digits_config(epochs: int = 1):
  config = recipes.base_config()
  config.method, config.model, config.data.name = "vanilla", "resnet8", "digits"
  config.batch_size, config.eval_batch_size, config.epochs = 32, 120, epochs
  config.progress_bar, config.log_every_steps = False, 10
  return config


def test_a_file_as_workdir_is_refused(tmp_path):
  path = tmp_path / "not_a_dir"
  path.write_text("x")
  with pytest.raises(UserError, match="is an existing file, not a directory"):
    train.train_and_evaluate(_digits_config(), str(path))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes through directory permissions, so a read-only dir is writable")
def test_a_read_only_workdir_is_refused(tmp_path):
  parent = tmp_path / "ro"
  parent.mkdir()
  parent.chmod(0o555)
  try:
    with pytest.raises(UserError, match="cannot write to --workdir"):
      workdir_lib.prepare(str(parent / "run"))
  finally:
    parent.chmod(0o755)


def test_the_config_record_ignores_neutral_fields_and_other_methods(tmp_path):
  config = _digits_config()
  workdir_lib.check_config(str(tmp_path), config)
  assert json.load(open(tmp_path / workdir_lib.RECORD))["optim"]["lr"] == config.optim.lr
  same = _digits_config(epochs=5)
  same.progress_bar, same.log_every_steps, same.dkd.beta = True, 3, 1.0  # dkd: not this run's method
  same.teacher.train_lr = 0.3  # a vanilla run has no teacher
  workdir_lib.check_config(str(tmp_path), same)
  changed = _digits_config()
  changed.optim.lr, changed.seed = 0.5, 3
  with pytest.raises(UserError) as e:
    workdir_lib.check_config(str(tmp_path), changed)
  assert "optim.lr: 0.05 when started, 0.5 now" in str(e.value) and "seed: 0" in str(e.value)
  assert "--accept_config_change" in str(e.value)
  workdir_lib.check_config(str(tmp_path), changed, accept_change=True)  # accepted: the record follows
  workdir_lib.check_config(str(tmp_path), changed)


def test_the_config_record_works_for_a_method_that_needs_its_own_fields(tmp_path):
  """SFTN's teacher run cannot be built from defaults (it needs sftn.student): the record uses the run's config."""
  config = _digits_config()
  config.method, config.sftn.student = "sftn", "resnet8"
  workdir_lib.check_config(str(tmp_path), config)
  workdir_lib.check_config(str(tmp_path), config)
  config.sftn.branch_kl_weight = 1.0
  with pytest.raises(UserError, match="sftn.branch_kl_weight"):
    workdir_lib.check_config(str(tmp_path), config)


def test_a_record_written_before_fields_moved_still_resumes(tmp_path):
  """Records with `teacher.bn_mode`/`data.views` (moved into the methods) compare in today's names."""
  config = recipes.load_config_module("configs/ofd_cifar.py").get_config()
  old = config.to_dict()
  del old["ofd"]["teacher_bn_mode"]
  old["teacher"]["bn_mode"], old["data"]["views"] = "batch_stats", 1
  (tmp_path / workdir_lib.RECORD).write_text(json.dumps(old))
  workdir_lib.check_config(str(tmp_path), config)  # the same run: resumes
  old["teacher"]["bn_mode"] = "eval"
  (tmp_path / workdir_lib.RECORD).write_text(json.dumps(old))
  with pytest.raises(UserError, match="ofd.teacher_bn_mode: 'eval' when started, 'batch_stats' now"):
    workdir_lib.check_config(str(tmp_path), config)


def test_a_record_from_before_a_method_field_existed_resumes_at_its_default(tmp_path):
  config = recipes.load_config_module("configs/kd_cifar.py").get_config()
  old = config.to_dict()
  del old["kd"]["logit_standardization"]  # recorded before LS existed
  (tmp_path / workdir_lib.RECORD).write_text(json.dumps(old))
  workdir_lib.check_config(str(tmp_path), config)
  config.kd.logit_standardization = True  # not the default: a different run
  with pytest.raises(UserError, match="kd.logit_standardization"):
    workdir_lib.check_config(str(tmp_path), config)


def test_a_moved_field_on_the_command_line_says_where_it_went():
  from kdjax import main  # pylint: disable=import-outside-toplevel
  message = main.unknown_field(["kdjax", "--config=configs/ofd_cifar.py", "--config.teacher.bn_mode=eval"])
  assert "config.teacher.bn_mode" in message and "has moved" in message and "ofd" in message
  assert main.unknown_field(["kdjax", "--config=configs/ofd_cifar.py", "--config.ofd.teacher_bn_mode=eval"]) is None


def test_resume_with_another_learning_rate_is_refused_before_training(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(_digits_config(epochs=1), workdir)
  longer = _digits_config(epochs=2)
  longer.optim.lr = 0.2
  stamp = os.path.getmtime(os.path.join(workdir, "metrics.jsonl"))
  with pytest.raises(UserError, match="optim.lr"):
    train.train_and_evaluate(longer, workdir)
  assert os.path.getmtime(os.path.join(workdir, "metrics.jsonl")) == stamp  # nothing trained
  results = train.train_and_evaluate(longer, workdir, accept_config_change=True)
  assert results["epochs"] == 2 and results["config"]["optim"]["lr"] == 0.2


def test_teacher_weights_that_contradict_meta_are_refused(tmp_path):
  dataset = data.load("digits")
  module = models.get("resnet8", num_classes=100)
  variables = module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  path = str(tmp_path / "teacher")
  checkpoint.save_model(path, {"params": variables["params"], "batch_stats": variables["batch_stats"]},
                        {"arch": "resnet8", "num_classes": 10, "dataset": "digits",
                         "mean": list(dataset.mean), "std": list(dataset.std)})
  config = _digits_config()
  config.method, config.teacher.arch, config.teacher.checkpoint = "kd", "resnet8", path
  with pytest.raises(checkpoint.CheckpointError, match=r"params/fc/bias is \(100,\) there but \(10,\)"):
    train.load_teacher(config, dataset, str(tmp_path))


def test_a_workdir_held_by_a_live_run_is_refused_and_a_killed_holder_does_not_block(tmp_path):
  import signal  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  holder = subprocess.Popen([sys.executable, "-c", (
      "import sys, time; from kdjax.train import workdir as w\n"
      "with w.hold(sys.argv[1]):\n  print('held', flush=True); time.sleep(600)"), workdir],
      stdout=subprocess.PIPE, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=rf"in use by process {holder.pid} on"):
      train.train_and_evaluate(_digits_config(), workdir)
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with workdir_lib.hold(workdir):  # the kernel released the killed holder's lock
    pass
