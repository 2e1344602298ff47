"""Prints README's methods table: every `configs/<method>_cifar.py` pair with its published top-1.

    python experiments/methods_table.py

The numbers come from `REPORTED` in experiments/repro/tables.py (the papers' tables), never
from kdjax runs; tests/test_readme.py checks README.md holds this output.
"""
from __future__ import annotations

import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kdjax import recipes  # noqa: E402
from repro import tables  # noqa: E402
# Column order: the logit methods, then the seed paper ReviewKD, then the CRD-benchmark baselines.
ORDER = ("kd", "dkd", "reviewkd", "fitnet", "at", "nst", "pkt", "sp", "rkd", "vid", "cc", "crd", "ofd", "ab",
         "ft", "fsp", "fkd", "afd")


def _reported() -> dict[str, dict[str, float]]:
  """{method: {pair: top-1}} for every configs/<method>_cifar.py with published numbers."""
  found = {}
  for path in glob.glob(os.path.join(ROOT, "configs", "*_cifar.py")):
    method = os.path.basename(path)[: -len("_cifar.py")]
    if tables.REPORTED.get(f"{method}_cifar") and getattr(recipes.load_config_module(path), "PAIRS", None):
      found[method] = tables.REPORTED[f"{method}_cifar"]
  return found


def markdown() -> str:
  """The table as markdown: one row per teacher,student pair, one column per method."""
  configs = _reported()
  methods = [m for m in ORDER if m in configs] + sorted(set(configs) - set(ORDER))
  pairs: list[str] = []
  for m in methods:
    pairs += [p for p in configs[m] if p not in pairs]
  lines = ["| teacher → student | " + " | ".join(f"`{m}`" for m in methods) + " |",
           "|---|" + "---:|" * len(methods)]
  for pair in pairs:
    cells = [f"{configs[m][pair]:.2f}" if pair in configs[m] else "—" for m in methods]
    lines.append(f"| {pair.replace(',', ' → ')} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


if __name__ == "__main__":
  print(markdown())
