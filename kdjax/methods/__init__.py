"""Distillation methods, one file each, looked up by name with `kdjax.methods.get`."""
from kdjax.methods.base import Method, Progress, cross_entropy
from kdjax.methods.registry import get, names, register

# Importing the method files fills the registry.
from kdjax.methods import vanilla, kd, dkd  # noqa: E402,F401  pylint: disable=wrong-import-position
