"""The name registry of model factories; family modules register into it when imported."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn

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


def factory(name: str) -> Callable[..., nn.Module]:
  """The factory registered as `name` (KeyError if none)."""
  return _FACTORIES[name]
