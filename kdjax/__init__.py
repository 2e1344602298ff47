"""kdjax: knowledge distillation in JAX/Flax.

`kdjax.models.get(name)`, `kdjax.methods.get(name)`, `kdjax.train.train_and_evaluate(config, workdir)`.
Importing kdjax never needs PyTorch; only reading .pth files does.
"""
from kdjax import methods, models  # noqa: F401

__version__ = "0.1.0"
