"""configs/{kd,dkd,reviewkd}_imagenet.py: the published recipes, valid pairs, clear errors."""
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from kdjax import methods, models, recipes
from kdjax.errors import UserError
from experiments.repro import tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
R34_R18, R50_MV1 = "imagenet_resnet34,imagenet_resnet18", "imagenet_resnet50,imagenet_mobilenetv1"


def _config_module(name):
  return recipes.load_config_module(os.path.join(ROOT, "configs", f"{name}.py"))


@pytest.mark.parametrize("name", ["kd_imagenet", "dkd_imagenet", "reviewkd_imagenet"])
def test_configs_build_with_the_imagenet_protocol(name):
  module = _config_module(name)
  assert set(module.PAIRS) == set(tables.REPORTED[name]) == {R34_R18, R50_MV1}
  for pair in module.PAIRS:
    c = module.get_config(pair)
    teacher, student = pair.split(",")
    assert (c.teacher.arch, c.model) == (teacher, student)
    assert c.teacher.arch in models.names() and c.model in models.names()
    assert c.data.name == "imagenet2012" and c.dtype == "bfloat16"
    assert (c.epochs, tuple(c.optim.lr_milestones), c.optim.lr_decay) == (100, (30, 60, 90), 0.1)
    assert (c.optim.weight_decay, c.optim.momentum, c.optim.nesterov) == (1e-4, 0.9, False)
    # The teacher is torchvision's pretrained network, from a checkpoint, never auto-trained.
    assert c.teacher.checkpoint.endswith({"imagenet_resnet34": "resnet34-333f7ec4.pth",
                                          "imagenet_resnet50": "resnet50-19c8e357.pth"}[teacher])
    methods.get(c.method, c)  # the method accepts its config node
  assert module.get_config().model == "imagenet_resnet18"


def test_published_method_hyperparameters():
  kd = _config_module("kd_imagenet").get_config(R50_MV1)
  assert (kd.kd.temperature, kd.kd.ce_weight, kd.kd.kd_weight) == (1.0, 0.5, 0.5)
  assert (kd.batch_size, kd.optim.lr) == (512, 0.2)
  dkd = _config_module("dkd_imagenet")
  for pair, beta in ((R34_R18, 0.5), (R50_MV1, 2.0)):
    c = dkd.get_config(pair)
    assert (c.dkd.beta, c.dkd.alpha, c.dkd.temperature, c.dkd.ce_weight) == (beta, 1.0, 1.0, 1.0)
    assert (c.dkd.warmup_epochs, c.dkd.warmup_epoch_base, c.batch_size, c.optim.lr) == (1.0, 1, 512, 0.2)
  assert tables.REPORTED["dkd_imagenet"] == {R34_R18: 71.70, R50_MV1: 72.05}
  review = _config_module("reviewkd_imagenet")
  for pair, weight, mid in ((R34_R18, 1.0, 512), (R50_MV1, 8.0, 256)):
    c = review.get_config(pair)
    assert (c.reviewkd.weight, c.reviewkd.max_mid_channel, c.batch_size, c.optim.lr) == (weight, mid, 256, 0.1)
  assert tables.REPORTED["reviewkd_imagenet"] == {R34_R18: 71.61, R50_MV1: 72.56}


@functools.lru_cache(maxsize=None)
def _abstract_outputs(arch):
  """(logits, features) of `arch` on a 224 batch, as shapes only (traced once per network)."""
  net = models.get(arch, num_classes=1000, dtype=jnp.bfloat16)
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  return jax.eval_shape(lambda x: net.apply(net.init(jax.random.key(0), x, train=False), x,
                                            train=False), x)


@pytest.mark.parametrize("name", ["kd_imagenet", "dkd_imagenet", "reviewkd_imagenet"])
def test_methods_initialise_on_every_pair_at_224(name):
  """Shapes only: each pair's features fit its method, e.g. ReviewKD's five levels."""
  module = _config_module(name)
  for pair in module.PAIRS:
    c = module.get_config(pair)
    method = methods.get(c.method, c)
    params, _ = jax.eval_shape(
        lambda s, t: method.init(jax.random.key(1), s, t, {"num_train": 10, "num_classes": 1000}),
        _abstract_outputs(c.model), _abstract_outputs(c.teacher.arch))
    if c.method == "reviewkd":
      assert jax.tree.leaves(params)  # the ABF fusion modules were built


@pytest.mark.parametrize("name", ["dkd_imagenet", "kd_imagenet"])
def test_bad_pair_is_one_line_error(name):
  with pytest.raises(UserError, match="valid pairs: imagenet_resnet34,imagenet_resnet18"):
    _config_module(name).get_config("resnet32x4,resnet8x4")


def test_cli_bad_pair_and_missing_teacher_are_one_line_errors(tmp_path):
  bad = subprocess.run([sys.executable, "-m", "kdjax.main",
                        "--config=configs/dkd_imagenet.py:imagenet_resnet34,imagenet_resnet50",
                        f"--workdir={tmp_path}/a"], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=300)
  assert bad.returncode == 2
  assert bad.stderr.strip().count("\n") == 0 and "unknown teacher,student pair" in bad.stderr
  # The default teacher path is a placeholder the user fills: absent -> a clear error, no training.
  missing = subprocess.run([sys.executable, "-m", "kdjax.main", "--config=configs/kd_imagenet.py",
                            f"--workdir={tmp_path}/b"], cwd=ROOT, env=ENV, capture_output=True,
                           text=True, timeout=300)
  assert missing.returncode == 2, missing.stderr[-2000:]
  last = missing.stderr.strip().splitlines()[-1]
  assert last.startswith("kdjax: error:") and "teachers/resnet34-333f7ec4.pth" in last
  assert not os.path.exists(os.path.join(tmp_path, "b", "checkpoints"))
