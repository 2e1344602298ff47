"""experiments/colab_tpu.ipynb runs top to bottom: its code cells, on CPU, with TFDS mocked.

The install cell (marked `# colab-setup`: git clone, pip, `%cd`) is skipped; every other
code cell runs, in order, as one Python program with `QUICK=1`, including the cell that
launches `python -m kdjax.main --config=configs/dkd_cifar.py ...` as a child process.
The mock must reach that child too, so a `sitecustomize` module on PYTHONPATH enters
`tfds.testing.mock_data` in every Python process the test starts.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "experiments", "colab_tpu.ipynb")
SETUP_MARKER = "# colab-setup"

_SITECUSTOMIZE = '''
import os
if os.environ.get("KDJAX_TEST_MOCK_TFDS"):
  import tensorflow_datasets as tfds
  _mock = tfds.testing.mock_data(num_examples=int(os.environ["KDJAX_TEST_MOCK_TFDS"]))
  _mock.__enter__()  # for the whole life of this interpreter
'''


def _code_cells() -> list[str]:
  nb = json.load(open(NOTEBOOK))
  cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
  return [c for c in cells if not c.lstrip().startswith(SETUP_MARKER)]


def test_notebook_structure():
  nb = json.load(open(NOTEBOOK))
  code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
  setup = [c for c in code if c.lstrip().startswith(SETUP_MARKER)]
  assert len(setup) == 1 and code[0] is setup[0]  # installs first
  for needed in ("jax[tpu]", "requirements.txt", "git clone"):
    assert needed in setup[0], needed
  assert "tensorflow-cpu" in open(os.path.join(ROOT, "requirements.txt")).read()
  for cell in _code_cells():  # plain Python: no shell or magics outside the setup cell
    assert not any(line.lstrip().startswith(("!", "%")) for line in cell.splitlines()), cell
    assert len(cell.splitlines()) <= 15  # short cells
  assert any("configs/dkd_cifar.py" in c and "kdjax.main" in c for c in _code_cells())
  assert any('"cifar100"' in c and "download=True" in c for c in _code_cells())
  # The notebook's own process never touches the accelerator: the training process owns it.
  assert not any("jax.devices()" in line and "-c" not in line
                 for c in _code_cells() for line in c.splitlines())


@pytest.mark.long
def test_notebook_cells_run_on_cpu_with_mock_data(tmp_path):
  site = tmp_path / "site"
  site.mkdir()
  (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
  script = tmp_path / "notebook.py"
  script.write_text("\n\n".join(_code_cells()) + "\n")
  workdir = tmp_path / "run"
  env = dict(os.environ, QUICK="1", WORKDIR=str(workdir), TFDS_DATA_DIR=str(tmp_path / "tfds"),
             KDJAX_TEST_MOCK_TFDS="128", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=os.pathsep.join([str(site), ROOT]))
  result = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  out = result.stdout
  assert "QUICK=True" in out and "CpuDevice" in out and "cifar100 (128, 32, 32, 3)" in out
  assert "training simple_cnn_teacher on cifar100" in out  # the teacher, then the DKD student
  assert "[kdjax] done: dkd simple_cnn_student on cifar100" in out
  results = json.load(open(workdir / "results.json"))
  assert (results["method"], results["teacher"], results["student"], results["epochs"]) == (
      "dkd", "simple_cnn_teacher", "simple_cnn_student", 1)
  assert os.path.exists(workdir / "teacher" / "results.json")
  assert "'best_top1'" in out  # the last cell printed the results
