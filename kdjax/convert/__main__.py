"""Command line: PyTorch .pth -> kdjax model directory, and back.

  python -m kdjax.convert --arch=resnet32x4 --torch=ckpt.pth --out=DIR \
      [--num_classes=100] [--dataset=cifar100] [--submodule=student] [--sha256=HEX]
  python -m kdjax.convert --to-torch --model=DIR --out=file.pth

DIR is written with `kdjax.checkpoint.save_model` (variables + meta.json); `--model` accepts such a
directory or a kdjax run workdir. Any error prints one line on stderr and exits with status 2.
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
from typing import NoReturn, Sequence

EXIT_ERROR = 2


class CliError(Exception):
  """A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
  """argparse that reports a bad command line as one line (no usage dump)."""

  def error(self, message: str) -> NoReturn:
    raise CliError(f"{message} (see --help)")


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog="python -m kdjax.convert", description=__doc__.split("\n")[0])
  p.add_argument("--to-torch", "--to_torch", dest="to_torch", action="store_true",
                 help="convert a kdjax model directory (--model) to a .pth (--out)")
  p.add_argument("--arch", help="kdjax model name, e.g. resnet32x4")
  p.add_argument("--torch", dest="torch_path", help="the PyTorch .pth to import")
  p.add_argument("--model", help="kdjax model directory or run workdir (with --to-torch)")
  p.add_argument("--out", required=True, help="output model directory, or .pth with --to-torch")
  p.add_argument("--num_classes", "--num-classes", type=int, default=None,
                 help="classifier width (default: the dataset's)")
  p.add_argument("--dataset", default="cifar100", help="cifar100 or cifar10: sets mean/std in meta")
  p.add_argument("--submodule", default=None,
                 help="take only <submodule>.* keys, e.g. 'student' for an mdistiller distiller")
  p.add_argument("--sha256", default=None, help="expected SHA-256 of the .pth; refuse others")
  return p


def _dataset_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...], int]:
  """(mean, std, num_classes) of a CIFAR dataset."""
  from kdjax.data.cifar import MEAN_STD  # pylint: disable=import-outside-toplevel
  if name not in MEAN_STD:
    raise CliError(f"unknown --dataset {name!r}; valid: {', '.join(sorted(MEAN_STD))}")
  mean, std = MEAN_STD[name]
  return mean, std, {"cifar100": 100, "cifar10": 10}[name]


def import_torch_checkpoint(args: argparse.Namespace) -> str:
  """--torch -> model directory; returns a one-line summary."""
  from kdjax import checkpoint, convert  # pylint: disable=import-outside-toplevel
  if not args.arch or not args.torch_path:
    raise CliError("--arch and --torch are required (or use --to-torch --model=DIR)")
  if not os.path.isfile(args.torch_path):
    raise CliError(f"--torch {args.torch_path}: no such file")
  mean, std, default_classes = _dataset_stats(args.dataset)
  num_classes = args.num_classes or default_classes
  digest = convert.sha256(args.torch_path)
  if args.sha256 and digest != args.sha256.lower():
    raise CliError(f"{args.torch_path} has SHA-256 {digest}, expected {args.sha256}")
  variables = convert.from_torch(args.torch_path, args.arch, num_classes, submodule=args.submodule)
  meta = {"arch": args.arch, "num_classes": num_classes, "dataset": args.dataset,
          "mean": list(mean), "std": list(std), "source": os.path.abspath(args.torch_path),
          "source_sha256": digest, "converted_by": "kdjax.convert"}
  if args.submodule:
    meta["submodule"] = args.submodule
  checkpoint.save_model(args.out, variables, meta)
  return f"wrote {args.arch} ({num_classes} classes) from {args.torch_path} to {args.out}"


def export_torch_checkpoint(args: argparse.Namespace) -> str:
  """--model DIR -> .pth; returns a one-line summary."""
  from kdjax import checkpoint, convert  # pylint: disable=import-outside-toplevel
  if not args.model:
    raise CliError("--to-torch needs --model=DIR (a kdjax model directory or run workdir)")
  variables, meta = checkpoint.load_model(args.model)
  arch = args.arch or meta.get("arch")
  holds = convert.to_torch(variables, args.out, arch=arch, num_classes=meta.get("num_classes"))
  return f"wrote {arch or 'model'} from {args.model} to {args.out}: {holds}"


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the CLI; returns the exit status."""
  from kdjax.checkpoint import CheckpointError  # pylint: disable=import-outside-toplevel
  try:
    args = _parser().parse_args(argv)
    run = export_torch_checkpoint if args.to_torch else import_torch_checkpoint
    print(run(args))
    return 0
  except (CliError, CheckpointError, ValueError, OSError, ImportError, pickle.UnpicklingError,
          RuntimeError) as e:
    message = " ".join(str(e).split())  # one line, whatever the exception's own formatting
    print(f"kdjax.convert: error: {message}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
  sys.exit(main())
