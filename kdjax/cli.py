"""The `kdjax` console script: `kdjax train ...` and `kdjax convert ...`.

`kdjax train` takes exactly the flags of `python -m kdjax.main` and `kdjax convert` those of
`python -m kdjax.convert`; this file only dispatches. The reproduction runner lives in the
repository's `experiments/`, outside the installed package (`python experiments/reproduce.py`).
"""
from __future__ import annotations

import sys
from typing import Sequence

_USAGE = """usage: kdjax {train,convert} [flags]

  train    train and evaluate a config: kdjax train --config=dkd_cifar.py[:TEACHER,STUDENT] --workdir=DIR
  convert  import a PyTorch checkpoint or export a kdjax model: kdjax convert --help

`kdjax train --helpshort` lists the training flags. A --config that is not a file names one
of the configs shipped with kdjax (configs/ in the repository)."""


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
  print(f"kdjax: error: unknown command {command!r}\n\n{_USAGE}", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
