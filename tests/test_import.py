"""`import kdjax` (and the trainer and CLI modules) must work without PyTorch installed."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = """
import sys
sys.modules['torch'] = None  # any `import torch` now raises ImportError
import kdjax, kdjax.train, kdjax.main, kdjax.convert, kdjax.data, kdjax.recipes
assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]
print(sorted(kdjax.models.names())[:3], kdjax.methods.names()[:3])
"""


def test_import_without_torch():
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
