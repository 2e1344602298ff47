"""The generic trainer's method hooks: masked passes, extra updates, prestage, teacher adapters, streaming."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import checkpoint, data, methods, models, recipes, train
from kdjax.methods import base


def _digits_config(method: str, model: str = "resnet8", epochs: int = 1):
  config = recipes.base_config()
  config.method, config.model, config.data.name = method, model, "digits"
  config.batch_size, config.eval_batch_size, config.epochs = 32, 120, epochs
  config.progress_bar, config.log_every_steps = False, 10
  return config


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _one_step(method, config, dataset, teacher=None, tvars=None):
  teachers = [train.Teacher(teacher, tvars)] if teacher is not None else []
  run = train.build(config, dataset, train.make_mesh(jax.devices()[:1]), teachers, method=method)
  images, labels = jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels)
  before = jax.device_get(run.state.params)  # the step donates the state's buffers
  state, metrics = run.train_step(run.state, run.teacher_vars, images, labels, run.permute(jax.random.key(0)))
  return before, state, metrics


def _ce_loss(params, state, student_out, teacher_out, batch, progress):
  del teacher_out, progress
  # A method parameter that the loss never reads: only weight decay could move it.
  return base.cross_entropy(student_out[0], batch["label"]) + 0.0 * params["w"].sum(), {}, state


def _init_w(rng, student_out, teacher_out, data_info):
  del rng, student_out, teacher_out, data_info
  return {"w": jnp.ones((3,))}, {}


def test_masked_pass_leaves_other_parameters_untouched():
  """`Method.trains` excludes parameters from the update entirely (no weight decay, no momentum)."""
  dataset = data.load("digits")
  config = _digits_config("vanilla")
  head_only = lambda path: path[0] == "student" and path[1] == "fc"
  method = base.Method(name="t", needs_teacher=False, loss=_ce_loss, init=_init_w, trains=head_only)
  before, state, _ = _one_step(method, config, dataset)
  before, after = _flat(before), _flat(jax.device_get(state.params))
  changed = {k for k in before if not np.array_equal(before[k], after[k])}
  assert changed and all("'fc'" in k for k in changed), changed
  # Without the mask, weight decay alone moves the unused method parameter.
  method = dataclasses.replace(method, trains=base.trains_all)
  _, state, _ = _one_step(method, config, dataset)
  assert not np.array_equal(np.asarray(state.params["method"]["w"]), np.ones(3))


def test_extra_update_runs_after_main_update_with_its_own_optimizer():
  """A second pass sees the parameters the first pass produced and steps with its own optimizer."""
  dataset = data.load("digits")
  config = _digits_config("vanilla")
  config.optim.weight_decay, config.optim.momentum = 0.0, 0.0

  def second(params, state, student_out, teacher_out, batch, progress):
    del student_out, teacher_out, batch, progress
    return jnp.sum(params["w"] ** 2), {"loss_w": jnp.sum(params["w"] ** 2)}, state

  adam_lr = 0.25
  method = base.Method(
      name="t", needs_teacher=False, loss=_ce_loss, init=_init_w,
      trains=lambda path: path[0] == "student",
      extra_updates=(base.Update(second, trains=lambda path: path[0] == "method",
                                 optimizer=lambda steps: (optax.sgd(adam_lr), optax.constant_schedule(adam_lr))),))
  bare = dataclasses.replace(method, extra_updates=(dataclasses.replace(
      method.extra_updates[0], optimizer=lambda steps: optax.sgd(adam_lr)),))
  with pytest.raises(TypeError, match=r"must return \(optax transformation, LR schedule\)"):
    train.build(config, dataset, train.make_mesh(jax.devices()[:1]), method=bare)
  _, state, metrics = _one_step(method, config, dataset)
  assert isinstance(state.opt_state, tuple) and len(state.opt_state) == 2
  # d/dw sum(w^2) = 2w at w = 1: one SGD(0.25) step gives 0.5; the main pass never touched w.
  np.testing.assert_allclose(np.asarray(state.params["method"]["w"]), 0.5 * np.ones(3), rtol=1e-6)
  assert float(metrics["loss_pass1"]) == pytest.approx(3.0)
  # The main pass moved the student exactly as a single-pass CE step does.
  single = base.Method(name="t", needs_teacher=False, loss=_ce_loss, init=_init_w,
                       trains=lambda path: path[0] == "student")
  _, ref, _ = _one_step(single, config, dataset)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7),
               state.params["student"], ref.params["student"])


def test_teacher_input_adapter_renormalises_and_resizes():
  """A teacher trained with other statistics/size sees its own normalisation and size."""
  rng = np.random.default_rng(0)
  raw = rng.uniform(size=(2, 8, 8, 3)).astype(np.float32)
  s_mean, s_std = (0.1, 0.2, 0.3), (0.5, 0.4, 0.3)
  t_mean, t_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  x = (raw - np.array(s_mean)) / np.array(s_std)
  spec = train.TeacherInput(mean=t_mean, std=t_std, image_size=0)
  out = train.adapt_teacher_input(jnp.asarray(x, jnp.float32), s_mean, s_std, spec)
  np.testing.assert_allclose(np.asarray(out), (raw - np.array(t_mean)) / np.array(t_std), atol=1e-5)
  spec = train.TeacherInput(mean=t_mean, std=t_std, image_size=4)
  assert train.adapt_teacher_input(jnp.asarray(x, jnp.float32), s_mean, s_std, spec).shape == (2, 4, 4, 3)
  assert train.adapt_teacher_input(jnp.asarray(x), s_mean, s_std, None) is not None


def test_teacher_batch_stats_mode_uses_batch_statistics():
  """bn_mode='batch_stats' is the teacher in train mode (BatchNorm over the batch), still frozen."""
  module = models.get("resnet8", num_classes=10)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 32, 32, 3)), jnp.float32)
  variables = module.init(jax.random.key(0), x, train=False)
  mean, std = (0.0,) * 3, (1.0,) * 3
  teachers = [train.Teacher(module, variables)]
  fwd = train.make_teacher_forward(teachers, mean=mean, std=std, bn_mode="batch_stats")
  expected, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(fwd((variables,), x, jax.random.key(0))[0]), np.asarray(expected[0]),
                             rtol=1e-6)
  eval_fwd = train.make_teacher_forward(teachers, mean=mean, std=std, bn_mode="eval")
  assert not np.allclose(np.asarray(eval_fwd((variables,), x, None)[0]), np.asarray(expected[0]))
  grad = jax.grad(lambda v: jnp.sum(fwd((v,), x, jax.random.key(0))[0]))(variables)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grad))


_PRESTAGE_CALLS = []


def _register_prestage_method():
  """A toy method whose prestage trains only its own parameter towards 2 (CE in the main stage)."""
  if "test_prestage" in methods.names():
    return

  def pre_loss(params, state, student_out, teacher_out, batch, progress):
    del student_out, teacher_out, batch, progress
    return jnp.sum((params["w"] - 2.0) ** 2), {"loss_pre": jnp.sum((params["w"] - 2.0) ** 2)}, state

  @methods.registry.register("test_prestage")
  def make(cfg):
    del cfg
    update = base.Update(pre_loss, trains=base.trains_method,
                         optimizer=lambda steps: (optax.sgd(0.1), optax.constant_schedule(0.1)))
    return base.Method(name="test_prestage", needs_teacher=False, loss=_ce_loss, init=_init_w,
                       trains=lambda path: path[0] == "student", prestage=base.Prestage(2, update))


@pytest.mark.long
def test_prestage_runs_once_and_seeds_the_main_training(tmp_path):
  """The prestage trains its parameters first (student untouched), is checkpointed, and is not rerun."""
  _register_prestage_method()
  config = _digits_config("test_prestage")
  config.optim.weight_decay = 0.0
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(config, workdir)
  assert results["epochs"] == 1
  pre = [json.loads(l) for l in open(os.path.join(workdir, "prestage", "metrics.jsonl"))]
  assert len(pre) == 2 and pre[1]["train_loss_pre"] < pre[0]["train_loss_pre"]
  assert pre[0]["train_lr"] == pytest.approx(0.1)  # the prestage's own LR, not config.optim.lr (0.05)
  # the main run's final state: w came from the prestage, frozen since
  ckpt = checkpoint.TrainStateCheckpoints(os.path.join(workdir, "checkpoints"))
  run = train.build(config, data.load("digits"), train.make_mesh(jax.devices()[:1]),
                    method=methods.get("test_prestage", config))
  state, _ = ckpt.restore(run.state)
  ckpt.close()
  w = np.asarray(state.params["method"]["w"])
  assert np.all(np.abs(w - 2.0) < 1.0) and not np.allclose(w, 1.0)  # moved towards 2 by the prestage
  # A longer rerun resumes the main stage and leaves the finished prestage alone.
  mtime = os.path.getmtime(os.path.join(workdir, "prestage", "metrics.jsonl"))
  config.epochs = 2
  train.train_and_evaluate(config, workdir)
  assert os.path.getmtime(os.path.join(workdir, "prestage", "metrics.jsonl")) == mtime


@dataclasses.dataclass(frozen=True)
class _StreamingDigits:
  """The digits set behind the streaming-data interface, as a host pipeline would serve it."""
  base: data.Dataset
  name: str = "digits"

  @property
  def num_classes(self): return self.base.num_classes
  @property
  def mean(self): return self.base.mean
  @property
  def std(self): return self.base.std
  @property
  def num_train(self): return self.base.train_images.shape[0]
  @property
  def num_test(self): return self.base.test_images.shape[0]
  @property
  def image_shape(self): return self.base.train_images.shape[1:]

  def train_batches(self, *, epoch, batch_size, seed, process_index, process_count):
    order = np.random.default_rng([seed, epoch]).permutation(self.num_train)
    local = batch_size // process_count
    for start in range(0, self.num_train - batch_size + 1, batch_size):
      idx = order[start + process_index * local:start + (process_index + 1) * local]
      yield {"image": self.base.train_images[idx], "label": self.base.train_labels[idx],
             "index": idx.astype(np.int32)}

  def eval_batches(self, *, batch_size, process_index, process_count):
    images, labels = data.pad_to(self.base.test_images, self.base.test_labels, batch_size)
    local = batch_size // process_count
    for start in range(0, images.shape[0], batch_size):
      sl = slice(start + process_index * local, start + (process_index + 1) * local)
      yield {"image": images[sl], "label": labels[sl], "index": np.full(local, -1, np.int32)}


def test_streaming_dataset_trains_and_evaluates(tmp_path, monkeypatch):
  """A host-pipeline dataset (the ImageNet path) runs through the same loop; eval counts every example."""
  streaming = _StreamingDigits(data.load("digits"))
  monkeypatch.setattr(train.pipeline, "load_dataset", lambda config: streaming)
  config = _digits_config("vanilla")
  results = train.train_and_evaluate(config, str(tmp_path / "s"))
  steps = streaming.num_train // config.batch_size
  record = json.loads(open(tmp_path / "s" / "metrics.jsonl").readline())
  assert results["last_top1"] == record["test_top1"] > 10.0  # better than chance after one epoch
  # The evaluation of the exported model over the resident test set gives the same number.
  from kdjax import checkpoint
  variables, _ = checkpoint.load_model(str(tmp_path / "s"))
  module = models.get("resnet8", num_classes=10)
  logits, _ = module.apply(variables, data.augment.normalize(streaming.base.test_images, streaming.mean,
                                                             streaming.std), train=False)
  top1 = 100.0 * np.mean(np.argmax(np.asarray(logits), -1) == streaming.base.test_labels)
  assert results["last_top1"] == pytest.approx(top1, abs=1e-6)
  assert steps > 0


def test_passes_and_teachers_are_sequences():
  """One optimizer per pass as a tuple (a bare transformation is refused, not split in two);
  several teachers reach a method as a list only when the run names an ensemble."""
  params = {"w": jnp.zeros(2)}
  with pytest.raises(TypeError, match="one optimizer per pass"):
    train.init_opt_state(optax.sgd(0.1), params)
  assert jax.tree.leaves(train.init_opt_state((optax.sgd(0.1, momentum=0.9),), params))  # bare state, 1 pass
  module = models.get("resnet8", num_classes=10)
  x = jnp.zeros((2, 32, 32, 3), jnp.float32)
  variables = module.init(jax.random.key(0), x, train=False)
  two = [train.Teacher(module, variables), train.Teacher(module, variables)]
  with pytest.raises(ValueError, match="ensemble=True"):
    train.make_teacher_forward(two, mean=(0.0,) * 3, std=(1.0,) * 3)
  outs = train.make_teacher_forward(two, mean=(0.0,) * 3, std=(1.0,) * 3, ensemble=True)(
      (variables, variables), x, jax.random.key(0))
  assert isinstance(outs, list) and len(outs) == 2
