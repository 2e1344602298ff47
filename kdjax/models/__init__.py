"""Model zoo: a name registry of Flax Linen modules.

Every model is called as `model.apply(variables, images_nhwc, train=False)` and
returns `(logits, features)`, where `features` is a dict:

* `feats`: tuple of post-ReLU stage outputs `(f0, f1, ..., fn)`, f0 being the stem;
* `preact_feats`: the same positions before each stage's final ReLU;
* `pooled`: the globally pooled vector that feeds the classifier.

Module and parameter names mirror the published PyTorch `state_dict` keys
(`layer1.0.conv1.weight` lives at `params['layer1']['0']['conv1']['kernel']`), so
checkpoints convert by a generic rule (see `kdjax.convert`).

A name 'A+B[+...]' of registered models is a cohort (`kdjax.models.cohort`): the
members trained together by the online methods; 'simkd(S,channels=C,hw=H,factor=F)' is
SimKD's student S as it predicts, with its projector and the teacher's classifier
(`kdjax.models.simkd`); `names()` lists registered models only.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from kdjax.errors import UserError
from kdjax.models import cohort, registry, simkd

register = registry.register
names = registry.names


def exists(name: str) -> bool:
  """Whether `get(name)` builds a model: a registered name, a cohort 'A+B[+...]' of them, or a
  SimKD student of one."""
  if name.startswith(simkd.PREFIX):
    return exists(simkd.parse(name)[0])
  parts = cohort.split_name(name)
  return name in names() or (len(parts) > 1 and all(p in names() for p in parts))


def compute_dtype(name: str) -> Optional[Any]:
  """The networks' compute dtype for `config.dtype` (None: float32, Flax's default)."""
  return jnp.bfloat16 if name == "bfloat16" else None


def get(name: str, num_classes: int = 100, **kwargs) -> nn.Module:
  """Returns the Flax module registered as `name`; 'A+B[+...]' is a cohort of those models."""
  if cohort.SEPARATOR in name:
    parts = cohort.split_name(name)
    unknown = [p for p in parts if p not in names()]
    if unknown or len(parts) < 2:
      raise UserError(f"unknown cohort member(s) {unknown or [name]!r} in {name!r}; a cohort is "
                      f"'A+B[+...]' of valid models: {', '.join(names())}")
    own = {k: kwargs.pop(k) for k in ("dtype", "ensemble") if k in kwargs}
    return cohort.Cohort(members=tuple(parts), num_classes=num_classes,
                         member_kwargs=tuple(sorted(kwargs.items())), **own)
  if name.startswith(simkd.PREFIX):
    student, channels, hw, factor = simkd.parse(name)
    return simkd.SimKDStudent(get(student, num_classes, **kwargs), channels, hw, factor, num_classes,
                              dtype=kwargs.get("dtype"))
  if name not in names():
    raise UserError(f"unknown model {name!r}; valid models: {', '.join(names())}")
  return registry.factory(name)(num_classes=num_classes, **kwargs)


# Importing the family modules fills the registry.
from kdjax.models import resnet  # noqa: E402,F401  pylint: disable=wrong-import-position
from kdjax.models import wrn  # noqa: E402,F401  pylint: disable=wrong-import-position
from kdjax.models import vgg  # noqa: E402,F401  pylint: disable=wrong-import-position
from kdjax.models import mobilenetv2  # noqa: E402,F401  pylint: disable=wrong-import-position
from kdjax.models import shufflenetv1  # noqa: E402,F401  pylint: disable=wrong-import-position
from kdjax.models import shufflenetv2  # noqa: E402,F401  pylint: disable=wrong-import-position
from kdjax.models import resnetv2  # noqa: E402,F401  pylint: disable=wrong-import-position
from kdjax.models import simple_cnn  # noqa: E402,F401  pylint: disable=wrong-import-position
from kdjax.models import imagenet_resnet  # noqa: E402,F401  pylint: disable=wrong-import-position
from kdjax.models import imagenet_mobilenetv1  # noqa: E402,F401  pylint: disable=wrong-import-position
