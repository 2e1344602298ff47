"""The `kdjax` console script: `kdjax train ...`, `kdjax convert ...`, `kdjax reproduce ...`.

`kdjax train` takes exactly the flags of `python -m kdjax.main`, `kdjax convert` those of
`python -m kdjax.convert` and `kdjax reproduce` those of `experiments/reproduce.py`; this file
only dispatches. The reproduction runner (its tables, job planner and report) lives in the
repository's `experiments/`, outside the installed package: `kdjax reproduce` runs the one of
the checkout kdjax is imported from, or of the current directory.
"""
from __future__ import annotations

import os
import runpy
import sys
from typing import Sequence

_USAGE = """usage: kdjax {train,convert,reproduce} [flags]

  train      train and evaluate a config: kdjax train --config=dkd_cifar.py[:TEACHER,STUDENT] --workdir=DIR
  convert    import a PyTorch checkpoint or export a kdjax model: kdjax convert --help
  reproduce  run a paper table (from a clone of the repository): kdjax reproduce --help

`kdjax train --helpshort` lists the training flags. A --config that is not a file names one
of the configs shipped with kdjax (configs/ in the repository)."""


RUNNER = os.path.join("experiments", "reproduce.py")


def find_runner(cwd: str | None = None) -> str | None:
  """`experiments/reproduce.py` of the checkout kdjax is imported from, else of `cwd`; None if neither."""
  checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for root in (checkout, os.getcwd() if cwd is None else cwd):
    path = os.path.join(root, RUNNER)
    if os.path.isfile(path):
      return path
  return None


def run_runner(path: str, argv: Sequence[str]) -> int:
  """Runs the reproduction runner at `path` with `argv`, as `python path argv...` would."""
  saved = sys.argv
  sys.argv = [path, *argv]
  try:
    runpy.run_path(path, run_name="__main__")
  except SystemExit as e:
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  finally:
    sys.argv = saved
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Dispatches `kdjax COMMAND ...` to the command's own entry point; returns the exit status."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(_USAGE)
    return 0 if argv else 2
  command, rest = argv[0], argv[1:]
  if command == "train":
    from absl import app  # pylint: disable=import-outside-toplevel
    from kdjax import main as train_main  # pylint: disable=import-outside-toplevel
    app.run(train_main.main, argv=["kdjax train", *rest], flags_parser=train_main.parse_flags)
    return 0
  if command == "convert":
    from kdjax.convert import __main__ as convert_main  # pylint: disable=import-outside-toplevel
    return convert_main.main(rest)
  if command == "reproduce":
    runner = find_runner()
    if runner is None:
      print("kdjax: error: the reproduction runner is experiments/reproduce.py of the kdjax repository "
            "(not part of the installed package); run `kdjax reproduce` from a clone of it.", file=sys.stderr)
      return 2
    return run_runner(runner, rest)
  print(f"kdjax: error: unknown command {command!r}\n\n{_USAGE}", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
