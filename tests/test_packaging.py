"""`pip install .` gives an importable kdjax and a `kdjax` command that work from any directory.

The wheel is built from pyproject.toml (setuptools, fetched from the package registry) and
installed without its dependencies into a fresh virtual environment that borrows this
environment's site-packages for them, so the test checks the package, not the resolver.
"""
import os
import site
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(bin directory of a fresh venv with the kdjax wheel installed, the wheel's path)."""
  tmp = tmp_path_factory.mktemp("pkg")
  wheels = tmp / "wheels"
  run = lambda *args: subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT)
  built = run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", ROOT, "-w", str(wheels))
  assert built.returncode == 0, built.stderr[-3000:]
  (wheel,) = wheels.glob("kdjax-*.whl")
  venv = tmp / "venv"
  assert run(sys.executable, "-m", "venv", "--without-pip", str(venv)).returncode == 0
  (purelib,) = (venv / "lib").glob("python3*/site-packages")
  (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
  pip = run(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(purelib),
            str(wheel))
  assert pip.returncode == 0, pip.stderr[-3000:]
  return venv / "bin", wheel, purelib


def _run(installed, *args, cwd):
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_wheel_holds_the_package_its_configs_and_the_command(installed):
  _, wheel, _ = installed
  names = zipfile.ZipFile(wheel).namelist()
  assert "kdjax/train/step.py" in names and "kdjax/methods/dkd.py" in names
  configs = {n.split("/")[-1] for n in names if n.startswith("kdjax/configs/")}
  assert configs == {f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py")}
  entry = next(n for n in names if n.endswith("entry_points.txt"))
  assert "kdjax = kdjax.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_import_and_command_from_another_directory(installed, tmp_path):
  bin_dir, _, purelib = installed
  # The repository is not on the path: cwd is a temporary directory and PYTHONPATH is unset.
  python = bin_dir / "python"
  out = _run(installed, str(python), "-c", "import kdjax, kdjax.main; print(kdjax.__file__); "
             "print(kdjax.main.bundled_configs_dir())", cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-2000:]
  module_file, configs_dir = out.stdout.split()
  assert module_file.startswith(str(purelib)) and configs_dir.startswith(str(purelib))
  script = [str(python), "-c", "import sys; from kdjax.cli import main; sys.exit(main())"]
  usage = _run(installed, *script, "--help", cwd=tmp_path)
  assert usage.returncode == 0 and "kdjax {train,convert,reproduce}" in usage.stdout
  # A shipped config found by name: it loads (and then the typo in the override is named).
  typo = _run(installed, *script, "train", "--config=quickstart.py", "--config.epochz=1", cwd=tmp_path)
  assert typo.returncode == 2 and "unknown config field config.epochz" in typo.stderr, typo.stderr
  convert = _run(installed, *script, "convert", "--help", cwd=tmp_path)
  assert convert.returncode == 0 and "--to-torch" in convert.stdout
  outside = _run(installed, *script, "reproduce", "--help", cwd=tmp_path)  # no clone here
  assert outside.returncode == 2 and "from a clone" in outside.stderr, outside.stderr
  inside = _run(installed, *script, "reproduce", "--help", cwd=ROOT)  # the repository's runner
  assert inside.returncode == 0 and "--table" in inside.stdout, inside.stderr[-2000:]
  unknown = _run(installed, *script, "frob", cwd=tmp_path)
  assert unknown.returncode == 2 and "unknown command" in unknown.stderr
