"""Model zoo: a name registry of Flax Linen modules.

Every model is called as `model.apply(variables, images_nhwc, train=False)` and
returns `(logits, features)`, where `features` is a dict:

* `feats`: tuple of post-ReLU stage outputs `(f0, f1, ..., fn)`, f0 being the stem;
* `preact_feats`: the same positions before each stage's final ReLU;
* `pooled`: the globally pooled vector that feeds the classifier.

Module and parameter names mirror the published PyTorch `state_dict` keys
(`layer1.0.conv1.weight` lives at `params['layer1']['0']['conv1']['kernel']`), so
checkpoints convert by a generic rule (see `kdjax.convert`).
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn

from kdjax.errors import UserError

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
  """Decorator that registers a model factory `f(num_classes=..., **kw) -> nn.Module`."""

  def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if name in _FACTORIES:
      raise ValueError(f"model {name!r} is registered twice")
    _FACTORIES[name] = factory
    return factory

  return wrap


def names() -> list[str]:
  """All registered model names, sorted."""
  return sorted(_FACTORIES)


def get(name: str, num_classes: int = 100, **kwargs) -> nn.Module:
  """Returns the Flax module registered as `name`."""
  if name not in _FACTORIES:
    raise UserError(f"unknown model {name!r}; valid models: {', '.join(names())}")
  return _FACTORIES[name](num_classes=num_classes, **kwargs)


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
