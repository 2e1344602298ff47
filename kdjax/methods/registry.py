"""Name registry of methods: each method file registers a `make(config) -> Method`."""
from __future__ import annotations

from typing import Callable

import ml_collections

from kdjax.errors import UserError
from kdjax.methods import base

_FACTORIES: dict[str, Callable[[ml_collections.ConfigDict], base.Method]] = {}


def register(name: str):
  """Decorator registering a method factory under `name`."""

  def wrap(factory):
    if name in _FACTORIES:
      raise ValueError(f"method {name!r} is registered twice")
    _FACTORIES[name] = factory
    return factory

  return wrap


def names() -> list[str]:
  """All registered method names, sorted."""
  return sorted(_FACTORIES)


def get(name: str, config: ml_collections.ConfigDict | None = None) -> base.Method:
  """Builds the method `name` from the run config (its hyperparameters live in `config.<name>`)."""
  if name not in _FACTORIES:
    raise UserError(f"unknown method {name!r}; valid methods: {', '.join(names())}")
  if config is None:
    from kdjax import recipes  # pylint: disable=import-outside-toplevel
    config = recipes.method_defaults()
  return _FACTORIES[name](config)
