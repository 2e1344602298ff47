"""Distillation methods, one file each, looked up by name with `kdjax.methods.get`.

Every module in this package other than `base` and `registry` is a method file;
importing the package imports them all, which fills the registry.
"""
import importlib
import pkgutil

from kdjax.methods import registry
from kdjax.methods.base import Method, Progress, cross_entropy
from kdjax.methods.registry import get, names, register

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
  if _info.name not in ("base", "registry") and not _info.name.startswith("_"):
    importlib.import_module(f"{__name__}.{_info.name}")
