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



_WRITER_SCRIPT = """
import glob, os, struct, sys
from kdjax.train import loop
writer = loop.Writer(sys.argv[1])
assert "torch" not in sys.modules
import torch  # installed in the test environment; the writer works beside it
from tensorboardX.proto import event_pb2
writer.train(7, 1, {"loss": 0.25, "top1": 50.0, "images_per_second": 1.0})
writer.epoch(7, {"epoch": 1}, [12.5])
writer.close()
(path,) = glob.glob(os.path.join(sys.argv[1], "tensorboard", "events.*"))
data, scalars = open(path, "rb").read(), {}
while data:  # TFRecord framing: length, its CRC, the Event, its CRC
  (n,) = struct.unpack("<Q", data[:8])
  event = event_pb2.Event.FromString(data[12:12 + n])
  data = data[16 + n:]
  for v in event.summary.value:
    scalars[v.tag] = (event.step, v.simple_value)
print(sorted(scalars.items()))
"""


def test_the_tensorboard_writer_does_not_import_torch(tmp_path):
  """tensorboardX imports torch when it is installed (1-2 s at every run's start, for torch
  tensors kdjax never passes); kdjax's writer imports it without, and its scalars still reach
  the event file."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", _WRITER_SCRIPT, str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == (
      "[('test/top1', (7, 12.5)), ('train/images_per_second', (7, 1.0)), ('train/loss', (7, 0.25)), "
      "('train/top1', (7, 50.0))]")
