"""`python -m kdjax.main` with TFDS mocked: the tests' stand-in for a machine with CIFAR prepared."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow_datasets as tfds  # noqa: E402
from absl import app  # noqa: E402

from kdjax import main  # noqa: E402

if __name__ == "__main__":
  with tfds.testing.mock_data(num_examples=int(os.environ.get("KDJAX_MOCK_EXAMPLES", "128"))):
    app.run(main.main, flags_parser=main.parse_flags)
