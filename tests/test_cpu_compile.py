"""How a train step compiles on the CPU: convolutions by XLA's Eigen runtime, not YNNPACK
(kdjax/cpu.py: its weight gradients measured 1.5-4x faster), with the same gradients up to
float32 rounding; and the teacher's forward ordered before the student's (step.teacher_first)
without changing a bit of the step."""
import re

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import cpu, data, recipes, train


def _conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _loss(x, w):
  return jnp.sum(jnp.tanh(_conv(x, w)))


def _entry(hlo: str) -> str:
  """The ENTRY computation of an optimised HLO module's text."""
  return hlo[hlo.index("\nENTRY "):]


def test_the_options_apply_on_the_cpu_only_and_yield_to_xla_flags():
  assert cpu.compiler_options("cpu", {}) == cpu.CPU_COMPILER_OPTIONS
  assert cpu.compiler_options("gpu", {}) is None and cpu.compiler_options("tpu", {}) is None
  chosen = {"XLA_FLAGS": f"--{cpu.YNN_FUSION_OPTION}=eltwise"}
  assert cpu.compiler_options("cpu", chosen) is None


def test_bfloat16_steps_keep_elementwise_ops_out_of_ynnpack(monkeypatch):
  """bfloat16 steps get YNNPACK's dot and reduce fusions only (with its elementwise fusions a
  bfloat16 resnet32x4 forward corrupted the heap on 2 devices: kdjax/cpu.py), and the trainer
  asks for the options of its config's dtype."""
  assert cpu.compiler_options("cpu", {}, dtype="float32") == cpu.CPU_COMPILER_OPTIONS
  bf16 = cpu.compiler_options("cpu", {}, dtype="bfloat16")
  assert bf16 == cpu.CPU_BF16_COMPILER_OPTIONS and "ELTWISE" not in bf16[cpu.YNN_FUSION_OPTION]
  assert "DOT" in bf16[cpu.YNN_FUSION_OPTION] and cpu.compiler_options("gpu", {}, dtype="bfloat16") is None
  asked = []
  real = cpu.compiler_options
  monkeypatch.setattr(cpu, "compiler_options", lambda *a, **k: asked.append(k.get("dtype")) or real(*a, **k))
  config = recipes.base_config()
  config.method, config.model, config.batch_size, config.dtype = "vanilla", "resnet8", 8, "bfloat16"
  train.build(config, data.load("digits"), train.make_mesh(jax.devices()[:1]))
  assert asked == ["bfloat16"]


def test_with_the_options_weight_gradients_leave_ynnpack_and_gradients_agree():
  """This jaxlib accepts the options; under them the weight gradient (a convolution whose window
  is the whole 16x16 map) is an op of the entry computation, run by XLA's Eigen runtime, where
  the default build puts it in a YNNPACK fusion; value and gradients equal the default build's up
  to float32 rounding."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 16, 16, 32), np.float32))
  w = jnp.asarray(0.1 * rng.standard_normal((3, 3, 32, 32), np.float32))
  fn = jax.value_and_grad(_loss, argnums=(0, 1))
  ours = jax.jit(fn, compiler_options=cpu.compiler_options("cpu", {})).lower(x, w).compile()
  default = jax.jit(fn).lower(x, w).compile()
  weight_grad = r"= f32\[[0-9,]+\]\{[0-9,]+\} convolution\([^\n]*window=\{size=16x16"
  assert re.search(weight_grad, _entry(ours.as_text())), _entry(ours.as_text())
  (v1, (dx1, dw1)), (v2, (dx2, dw2)) = ours(x, w), default(x, w)
  np.testing.assert_allclose(v1, v2, rtol=1e-5)
  np.testing.assert_allclose(dx1, dx2, rtol=0, atol=1e-5 * float(np.max(np.abs(dx2))))
  np.testing.assert_allclose(dw1, dw2, rtol=0, atol=1e-5 * float(np.max(np.abs(dw2))))


def test_the_teacher_first_barrier_changes_no_bit_of_a_kd_step():
  """teacher_first (the CPU's) orders the work only: the step with it holds an optimization
  barrier, the one without none, and two KD steps of each give the same state and loss bit for bit."""
  from kdjax import methods, models  # pylint: disable=import-outside-toplevel
  config = recipes.base_config()
  config.method, config.model, config.batch_size = "kd", "resnet8", 8
  dataset = data.load("digits")
  model = models.get("resnet8", num_classes=10)
  teacher_module = models.get("resnet8", num_classes=10)
  init = jax.jit(lambda key: teacher_module.init(key, jnp.zeros((1, 32, 32, 3)), train=False))
  teachers = [train.Teacher(teacher_module, init(jax.random.key(7)))]
  method = methods.get("kd", config)
  lr_fn = train.create_learning_rate_fn(config, 10)
  tx = train.create_optimizer(config, lr_fn)
  mesh = train.make_mesh(jax.devices()[:1])
  images, labels = jnp.asarray(dataset.train_images[:80]), jnp.asarray(dataset.train_labels[:80])
  finals = []
  for first in (False, True):
    step = jax.jit(train.make_train_step(
        model, method, (tx,), lr_fn, teachers, batch_size=8, steps_per_epoch=10, mean=dataset.mean,
        std=dataset.std, crop_padding=4, flip=True, aug_key=jax.random.key(1),
        batch_sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")),
        teacher_first=first), compiler_options=cpu.compiler_options("cpu", {}))
    state = train.create_train_state(jax.random.key(0), model, method, (tx,), (32, 32, 3))
    args = (state, tuple(t.variables for t in teachers), images, labels, jnp.arange(80))
    assert ("optimization_barrier" in step.lower(*args).as_text()) == first
    for _ in range(2):
      state, metrics = step(state, tuple(t.variables for t in teachers), images, labels, jnp.arange(80))
    finals.append((jax.device_get(state), float(metrics["loss"])))
  (a, loss_a), (b, loss_b) = finals
  assert loss_a == loss_b
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
