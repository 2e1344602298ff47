"""Numerics and plumbing shared by the feature baselines (a leading '_': not a method file).

* `match_spatial`: the references' rule of pooling the larger of two maps down to
  the smaller one (`kdjax.ops.adaptive_avg_pool`, PyTorch's bins);
* `ce_plus_feature_method`: the composition every baseline here uses,
  `ce_weight * CE + feat_weight * term` (RepDistiller `-r 1 -a 0 -b w`,
  mdistiller `CE_WEIGHT` / `FEAT_WEIGHT`); `register_feature_method` declares
  such a method from its term, its optional init and its defaults.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from kdjax import ops, torch_optim
from kdjax.errors import UserError
from kdjax.methods import base, registry

PyTree = Any
Features = dict[str, Any]
# term(params, state, student_features, teacher_features) -> (unweighted term, new state)
TermFn = Callable[[PyTree, PyTree, Features, Features], tuple[jax.Array, PyTree]]


def match_spatial(f_s: jax.Array, f_t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Pools the larger NHWC map (compared by height, as the references do) to the other's size."""
  s_h, t_h = f_s.shape[1], f_t.shape[1]
  if s_h > t_h:
    f_s = ops.adaptive_avg_pool(f_s, f_t.shape[1:3])
  elif s_h < t_h:
    f_t = ops.adaptive_avg_pool(f_t, f_s.shape[1:3])
  return f_s, f_t


def f32(xs: Sequence[jax.Array]) -> list[jax.Array]:
  """Every array of `xs` in float32 at least: feature losses never run in bf16."""
  return [base.at_least_f32(x) for x in xs]


def single_teacher(teacher_out: Any, name: str) -> base.ModelOutput:
  """`teacher_out` as one `(logits, features)` pair; these baselines take a single teacher."""
  if not isinstance(teacher_out, tuple):
    raise UserError(f"method {name!r} distills from one teacher; got {type(teacher_out).__name__}.")
  return teacher_out


def teacher_classifier(teacher_variables: Any, width: int) -> dict[str, jax.Array]:
  """The teacher's final linear layer `{'kernel': (width, classes), 'bias'}`, for methods that
  reuse it (SRD, SimKD); refused unless it reads a `width`-wide representation."""
  params = (teacher_variables or {}).get("params", {})
  for name in ops.CLASSIFIER_NAMES:
    layer = params.get(name)
    while isinstance(layer, dict) and "kernel" not in layer and len(layer) == 1:
      layer = next(iter(layer.values()))  # MobileNetV2's `classifier` is a Sequential of one Linear
    if isinstance(layer, dict) and "kernel" in layer:
      if layer["kernel"].shape[0] != width:
        raise UserError(f"the teacher's classifier `{name}` reads {layer['kernel'].shape[0]} features, "
                        f"not the {width} of its last feature map; this method needs a teacher whose "
                        "classifier follows its last stage (ResNet, WRN, VGG, ResNet50).")
      return {"kernel": jnp.asarray(layer["kernel"]), "bias": jnp.asarray(layer["bias"])}
  raise UserError(f"no classifier ({', '.join(ops.CLASSIFIER_NAMES)}) among the teacher's parameters.")


def ce_plus_feature_method(name: str, ce_weight: float, feat_weight: float, term: TermFn,
                           init: Callable[..., tuple[PyTree, PyTree]] = base.empty_init,
                           **method_fields) -> base.Method:
  """Method with loss `ce_weight * CE + feat_weight * term`; logs `loss_ce`, raw `loss_<name>`."""

  def loss(params, state, student_out, teacher_out, batch, progress):
    del progress
    t_out = single_teacher(teacher_out, name)
    ce = base.cross_entropy(student_out[0], batch["label"])
    value, new_state = term(params, state, student_out[1], jax.lax.stop_gradient(t_out[1]))
    metrics = {"loss_ce": ce, f"loss_{name}": value}
    return ce_weight * ce + feat_weight * value, metrics, new_state

  return base.Method(name=name, needs_teacher=True, loss=loss, init=init, **method_fields)


# node_term(config.<name>, params, state, student_features, teacher_features) -> (term, new state)
NodeTermFn = Callable[..., tuple[jax.Array, PyTree]]
# node_init(config.<name>, rng, student_features, teacher_features) -> (params, state)
NodeInitFn = Callable[..., tuple[PyTree, PyTree]]


def register_feature_method(name: str, term: NodeTermFn, init: NodeInitFn | None = None, *,
                            defaults: dict[str, Any], **method_fields) -> None:
  """Registers `name` as `ce_weight * CE + feat_weight * term`, hyperparameters in `config.<name>`.

  `term` and `init` get the method's config node first; `defaults` (with `ce_weight`
  and `feat_weight`) are its published values.
  """

  def make(cfg) -> base.Method:
    node = cfg[name]
    method_init = base.empty_init
    if init is not None:
      def method_init(rng, student_out, teacher_out, data_info):
        del data_info
        return init(node, rng, student_out[1], single_teacher(teacher_out, name)[1])
    return ce_plus_feature_method(name, float(node.ce_weight), float(node.feat_weight),
                                  functools.partial(term, node), method_init, **method_fields)

  make.__doc__ = f"{name} from `config.{name}` ({', '.join(sorted(defaults))})."
  registry.register(name, defaults=defaults)(make)


# ---------------------------------------------------------------- pre-stage helpers (AB, FT, FSP)

# Top-level student parameter groups outside RepDistiller's `get_feat_modules()`: the layers its
# AB/FSP initialisation leaves alone (not in the init optimizer: no update, no weight decay).
# WRN's final `bn1` is among them although it makes the pre-ReLU f3 (RepDistiller lists only
# conv1 and block1-3); MobileNetV2's and ShuffleV2's last 1x1 conv + BN come after the last tap.
_STUDENT_HEADS = {"MobileNetV2": ("conv2", "classifier"), "ShuffleV2": ("conv2", "bn2", "linear")}
_WRN_HEAD = ("bn1", "fc")


def student_head(arch: str) -> tuple[str, ...]:
  """Top-level parameter groups of `arch` that are not its feature layers (RepDistiller's view)."""
  if arch.startswith("wrn_"):
    return _WRN_HEAD
  return _STUDENT_HEADS.get(arch, ops.CLASSIFIER_NAMES)


def trains_student(path: base.ParamPath) -> bool:
  """Mask of a pass that moves the student only (the method's own modules stay as they are)."""
  return path[0] == "student"


def trains_student_features(arch: str) -> Callable[[base.ParamPath], bool]:
  """Mask moving the method's params and the student's feature layers, not its classifier head."""
  head = student_head(arch)

  def trains(path: base.ParamPath) -> bool:
    return path[0] == "method" or (path[0] == "student" and path[1] not in head)

  return trains


def constant_lr_sgd(lr: float, momentum: float, weight_decay: float, nesterov: bool = False):
  """`Update.optimizer` of a pre-stage: PyTorch SGD (coupled L2, momentum) at a constant LR."""

  def make(steps_per_epoch: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    del steps_per_epoch  # RepDistiller's `init()` never changes the LR
    return torch_optim.sgd(lr, momentum, weight_decay, nesterov), optax.constant_schedule(lr)

  return make


def init_prestage(cfg, node, loss: base.LossFn, trains: Callable[[base.ParamPath], bool]):
  """RepDistiller's `init()` stage: `node.init_epochs` of `loss` at a constant LR (`node.init_lr`,
  0: the run's `optim.lr`) with the run's momentum and weight decay; None for 0 epochs."""
  if int(node.init_epochs) <= 0:
    return None
  lr = float(node.init_lr) or float(cfg.optim.lr)
  return base.Prestage(int(node.init_epochs), base.Update(
      loss, trains, constant_lr_sgd(lr, float(cfg.optim.momentum), float(cfg.optim.weight_decay))))


def ce_only_loss(ce_weight: float) -> base.LossFn:
  """Main-stage loss of the initialisation-only methods (AB, FSP): `ce_weight * CE`, state as is."""

  def loss(params, state, student_out, teacher_out, batch, progress):
    del params, teacher_out, progress
    ce = base.cross_entropy(student_out[0], batch["label"])
    return ce_weight * ce, {"loss_ce": ce}, state

  return loss
