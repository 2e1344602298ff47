"""Name registry of methods: each method file registers a `make(config) -> Method`.

A method's hyperparameters live in `config.<name>`; the method file declares
their published defaults with `register(name, defaults={...})`, and
`kdjax.recipes.base_config()` (`kdjax.defaults`) gives every registered method its node, so a
config override of any field is checked against them.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import ml_collections

from kdjax import defaults as kd_defaults
from kdjax.errors import UserError
from kdjax.methods import base

_FACTORIES: dict[str, Callable[[ml_collections.ConfigDict], base.Method]] = {}
_DEFAULTS: dict[str, dict[str, Any]] = {}


def register(name: str, defaults: dict[str, Any] | None = None):
  """Decorator registering a method factory under `name`, with its config node's defaults."""

  def wrap(factory):
    if name in _FACTORIES:
      raise ValueError(f"method {name!r} is registered twice")
    _FACTORIES[name] = factory
    if defaults is not None:
      _DEFAULTS[name] = dict(defaults)
    return factory

  return wrap


def names() -> list[str]:
  """All registered method names, sorted."""
  return sorted(_FACTORIES)


def defaults() -> dict[str, dict[str, Any]]:
  """`{method: {field: default}}` for every method that has hyperparameters."""
  return copy.deepcopy(_DEFAULTS)


def get(name: str, config: ml_collections.ConfigDict | None = None) -> base.Method:
  """Builds the method `name` from the run config (its hyperparameters live in `config.<name>`)."""
  if name not in _FACTORIES:
    raise UserError(f"unknown method {name!r}; valid methods: {', '.join(names())}")
  if config is None:
    config = kd_defaults.base_config(_DEFAULTS)
  return _FACTORIES[name](config)
