"""SSKD (ECCV 2020): the student's loss and the teacher head's task vs its release in float64, the
error-level ranking, the four rotated views of one flipped image, the config. Its 2-epoch train
(prestage of the teacher's head included) is in tests/test_recent_methods_train.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kdjax import methods, recipes, train
from kdjax.methods import sskd as sskd_lib
from tests.torch_reference import losses as ref

B, C, D = 6, 10, 5


def _outputs(seed):
  """Per rotation (4 lists of B rows): student/teacher logits and projections, and labels."""
  rng = np.random.default_rng(seed)
  z = lambda scale: [scale * rng.standard_normal((B, C)) for _ in range(4)]
  r = lambda: [rng.standard_normal((B, D)) for _ in range(4)]
  return z(3.0), z(3.0), r(), r(), rng.integers(0, C, B)


def _interleave(per_rotation):
  """Rotation-major lists -> the release's rows, image by image."""
  return np.stack(per_rotation, axis=1).reshape(4 * B, -1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sskd_student_loss_matches_the_release_in_float64(seed):
  s_z, t_z, s_r, t_r, y = _outputs(seed)
  c = recipes.base_config().sskd
  with jax.enable_x64(True):
    def total(sz, sr):
      terms = sskd_lib.sskd_terms(c, list(sz), [jnp.asarray(a) for a in t_z], list(sr),
                                  [jnp.asarray(a) for a in t_r], jnp.asarray(y, jnp.int32))
      return 0.1 * terms["ce"] + 0.9 * terms["kd"] + 2.7 * terms["tf"] + 10.0 * terms["ss"], terms
    (value, terms), (g_z, g_r) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
        [jnp.asarray(a) for a in s_z], [jnp.asarray(a) for a in s_r])
  out = torch.tensor(_interleave(s_z), requires_grad=True)
  feat = torch.tensor(_interleave(s_r), requires_grad=True)
  loss = ref.sskd_student(out, feat, torch.tensor(_interleave(t_z)), torch.tensor(_interleave(t_r)),
                          torch.tensor(y), B)
  loss.backward()
  np.testing.assert_allclose(float(value), loss.item(), rtol=1e-10)
  np.testing.assert_allclose(_interleave([np.asarray(g) for g in g_z]), out.grad.numpy(), rtol=1e-8, atol=1e-14)
  np.testing.assert_allclose(_interleave([np.asarray(g) for g in g_r]), feat.grad.numpy(), rtol=1e-8, atol=1e-14)
  assert 0 < float(terms["kept_ss"]) < 1  # the ratio 0.75 dropped some wrong rows here


def test_the_teacher_heads_task_matches_the_release():
  *_, t_r, _ = _outputs(3)
  with jax.enable_x64(True):
    ours = float(sskd_lib.ss_task_loss([jnp.asarray(a) for a in t_r]))
  np.testing.assert_allclose(ours, ref.sskd_teacher_head(torch.tensor(_interleave(t_r)), B).item(), rtol=1e-10)


def test_error_level_ranking_keeps_the_correct_rows_and_the_best_ranked_wrong_ones():
  rank = jnp.asarray([0, 3, 1, 0, 2, 1, 5, 1])
  kept = np.asarray(sskd_lib.kept_rows(rank, 0.5, jnp.arange(8)))
  # 2 correct + int(0.5 * 6) = 3 wrong: the three rank-1 rows.
  np.testing.assert_array_equal(kept, [1, 0, 1, 1, 0, 1, 0, 1])
  # int(0.4 * 6) = 2 wrong: two of the three rank-1 rows, the first two in the release's order.
  np.testing.assert_array_equal(np.asarray(sskd_lib.kept_rows(rank, 0.4, jnp.arange(8))), [1, 0, 1, 1, 0, 1, 0, 0])
  np.testing.assert_array_equal(np.asarray(sskd_lib.kept_rows(rank, 0.4, jnp.asarray([0, 1, 7, 3, 4, 2, 6, 5]))),
                                [1, 0, 0, 1, 0, 1, 0, 1])


def test_the_step_shows_four_rotations_of_one_flipped_image():
  from kdjax.data import augment  # pylint: disable=import-outside-toplevel
  from kdjax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  method = methods.get("sskd", recipes.base_config())
  assert (method.views, method.view_forward, method.view_flip) == (4, "concat", "shared")
  images = jnp.asarray(np.random.default_rng(4).integers(0, 256, (8, 32, 32, 3)), jnp.uint8)
  spec = step_lib.StepSpec(model=None, passes=(), txs=(), lr_fn=None, teacher_forward=None, batch_size=8,
                           steps_per_epoch=1, mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255),
                           crop_padding=0, flip=True, aug_key=jax.random.key(0),
                           batch_sharding=jax.sharding.NamedSharding(
                               train.make_mesh(jax.devices()[:1]), jax.sharding.PartitionSpec("data")),
                           views=4, view_transforms=method.view_transforms, view_forward="concat",
                           view_flip="shared")
  xs, _, _, _ = step_lib.select_batch(spec, 0, images, jnp.arange(8), jnp.arange(8), jax.random.key(9))
  flip_key, _ = jax.random.split(jax.random.key(9))
  flipped = np.asarray(augment.random_crop_flip(flip_key, images, 0, True), np.float32)
  for k, view in enumerate(xs):  # no crop here (padding 0): exactly np.rot90 of the flipped image
    np.testing.assert_allclose(np.asarray(view), np.rot90(flipped, k, axes=(1, 2)), atol=1e-3)
  assert not np.array_equal(flipped, np.asarray(images, np.float32))  # some image was flipped


def test_the_method_trains_the_students_head_and_prestages_the_teachers():
  cfg = recipes.base_config()
  method = methods.get("sskd", cfg)
  assert method.prestage.epochs == 60 and method.prestage.update.trains(("method", "t_head", "0", "kernel"))
  assert not method.prestage.update.trains(("method", "s_head", "0", "kernel"))
  assert method.trains(("student", "conv1", "kernel")) and method.trains(("method", "s_head", "2", "bias"))
  assert not method.trains(("method", "t_head", "2", "bias"))
  tx, lr_fn = method.prestage.update.optimizer(10)
  assert [float(lr_fn(s)) for s in (0, 299, 300, 450)] == pytest.approx([0.05, 0.05, 0.005, 0.0005])
  cfg.sskd.t_epochs = 0
  assert methods.get("sskd", cfg).prestage is None
  c = recipes.load_config_module("configs/sskd_cifar.py").get_config("resnet32x4,ShuffleV2")
  assert (c.method, c.optim.lr, c.sskd.tf_weight, c.sskd.ss_weight, c.sskd.ss_temperature) == (
      "sskd", 0.01, 2.7, 10.0, 0.5)


@pytest.mark.parametrize("scale", [1e2, 1e4])
@pytest.mark.parametrize("temperature", [0.5, 10.0])
def test_sskd_finite_at_extreme_logits(scale, temperature):
  s_z, t_z, s_r, t_r, y = _outputs(5)
  c = recipes.base_config().sskd
  c.kd_temperature = c.tf_temperature = c.ss_temperature = temperature
  f32 = lambda xs, k=1.0: [jnp.asarray(k * a, jnp.float32) for a in xs]
  fn = lambda sz: sum(v for k, v in sskd_lib.sskd_terms(c, sz, f32(t_z, scale), f32(s_r), f32(t_r),
                                                        jnp.asarray(y, jnp.int32)).items() if not k.startswith("kept"))
  value, grads = jax.value_and_grad(fn)(f32(s_z, scale))
  assert np.isfinite(float(value)) and all(np.all(np.isfinite(np.asarray(g))) for g in grads)
