"""Prints README's methods table: every `configs/<method>_cifar.py` pair with its published top-1.

    python experiments/methods_table.py

The numbers come from each config's REPORTED dict (the papers' tables), never
from kdjax runs; tests/test_readme.py checks README.md holds this output.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# Column order: the logit methods, then the seed paper ReviewKD, then the CRD-benchmark baselines.
ORDER = ("kd", "dkd", "reviewkd", "fitnet", "at", "nst", "pkt", "sp", "rkd", "vid", "cc", "crd", "ofd", "ab",
         "ft", "fsp", "fkd", "afd")


def _configs() -> dict[str, object]:
  """{method: config module} for every configs/<method>_cifar.py with REPORTED numbers."""
  found = {}
  for path in glob.glob(os.path.join(ROOT, "configs", "*_cifar.py")):
    method = os.path.basename(path)[: -len("_cifar.py")]
    spec = importlib.util.spec_from_file_location(f"_table_{method}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if getattr(module, "REPORTED", None) and getattr(module, "PAIRS", None):
      found[method] = module
  return found


def markdown() -> str:
  """The table as markdown: one row per teacher,student pair, one column per method."""
  configs = _configs()
  methods = [m for m in ORDER if m in configs] + sorted(set(configs) - set(ORDER))
  pairs: list[str] = []
  for m in methods:
    pairs += [p for p in configs[m].REPORTED if p not in pairs]
  lines = ["| teacher → student | " + " | ".join(f"`{m}`" for m in methods) + " |",
           "|---|" + "---:|" * len(methods)]
  for pair in pairs:
    cells = [f"{configs[m].REPORTED[pair]:.2f}" if pair in configs[m].REPORTED else "—" for m in methods]
    lines.append(f"| {pair.replace(',', ' → ')} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


if __name__ == "__main__":
  print(markdown())
