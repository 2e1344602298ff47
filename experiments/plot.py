"""PNG figures of a `experiments/reproduce.py` workdir.

    python experiments/plot.py WORKDIR [--out=WORKDIR/plots]

Writes one figure per method x pair (and per teacher) with the training curves of
each seed, train loss and test top-1 per epoch, read from the runs'
`metrics.jsonl`, and `table.png`: the table's best-epoch top-1 (mean ± sample std
over seeds) beside the published number, read from `WORKDIR/table.csv`.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.ticker import MaxNLocator  # noqa: E402

Curves = dict[str, list[dict]]  # seed label -> epoch records


def read_metrics(path: str) -> list[dict]:
  """The epoch records of one metrics.jsonl, one per epoch, in order.

  A run killed between writing an epoch's line and its checkpoint writes that epoch
  again when it resumes, so the last record of each epoch wins.
  """
  by_epoch: dict[int, dict] = {}
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue  # blank, or the line a running job is writing
      by_epoch[int(record["epoch"])] = record
  return [by_epoch[e] for e in sorted(by_epoch)]


def find_runs(root: str) -> dict[tuple[str, str], Curves]:
  """(method, cell) -> {seed label: records} for every metrics.jsonl under WORKDIR/runs and /teachers."""
  found: dict[tuple[str, str], Curves] = {}
  for path in sorted(glob.glob(os.path.join(root, "runs", "*", "*", "seed*", "metrics.jsonl"))):
    seed_dir = os.path.dirname(path)
    cell_dir = os.path.dirname(seed_dir)
    method = os.path.basename(os.path.dirname(cell_dir))
    found.setdefault((method, os.path.basename(cell_dir)), {})[os.path.basename(seed_dir)] = read_metrics(path)
  for path in sorted(glob.glob(os.path.join(root, "teachers", "*", "metrics.jsonl"))):
    found[("teacher", os.path.basename(os.path.dirname(path)))] = {"seed0": read_metrics(path)}
  return found


def run_title(root: str, method: str, cell: str) -> str:
  """'kd: resnet56 → resnet20' from a run's results.json (the folder name alone is ambiguous: wrn_40_2_wrn_16_2)."""
  base = os.path.join(root, "teachers", cell) if method == "teacher" else os.path.join(root, "runs", method, cell)
  paths = glob.glob(os.path.join(base, "results.json")) + glob.glob(os.path.join(base, "seed*", "results.json"))
  for path in sorted(paths):
    try:
      with open(path) as f:
        results = json.load(f)
    except (OSError, ValueError):
      continue
    teacher, student = results.get("teacher"), results.get("student")
    if method != "teacher" and teacher and student:
      return f"{method}: {teacher} → {student}"
    if student:
      return f"{method}: {student} ({results.get('dataset', '')})".replace(" ()", "")
  return f"{method}: {cell}"


def plot_curves(title: str, curves: Curves, out: str) -> str:
  """One figure: train loss and test top-1 per epoch, one line per seed; returns the PNG path."""
  fig, (ax_loss, ax_top1) = plt.subplots(1, 2, figsize=(10, 3.8))
  for label, records in sorted(curves.items()):
    epochs = [r["epoch"] for r in records]
    ax_loss.plot(epochs, [r.get("train_loss", float("nan")) for r in records], marker=".", label=label)
    ax_top1.plot(epochs, [r["test_top1"] for r in records], marker=".", label=label)
  ax_loss.set(xlabel="epoch", ylabel="train loss", title="train loss")
  ax_top1.set(xlabel="epoch", ylabel="test top-1 (%)", title="test top-1")
  for ax in (ax_loss, ax_top1):
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def read_table(path: str) -> list[dict[str, str]]:
  """The rows of table.csv."""
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _float(text: str) -> Optional[float]:
  return float(text) if text not in ("", None) else None


def plot_table(rows: Sequence[dict[str, str]], out: str) -> str:
  """Grouped bars per pair: each method's best-epoch mean ± std, the paper's number as a black tick."""
  pairs = list(dict.fromkeys(f"{r['teacher']}→{r['student']}" for r in rows))
  methods = list(dict.fromkeys(r["method"] for r in rows))
  width = 0.8 / max(1, len(methods))
  fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(pairs) + 0.4 * len(pairs) * len(methods)), 4.5))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  labelled: set[str] = set()  # each legend entry once

  def label(name: str) -> Optional[str]:
    if name in labelled:
      return None
    labelled.add(name)
    return name

  for r in rows:
    m = methods.index(r["method"])
    x = pairs.index(f"{r['teacher']}→{r['student']}") + (m - (len(methods) - 1) / 2) * width
    mean, std, paper = _float(r["best_mean"]), _float(r["best_std"]), _float(r["paper_top1"])
    if mean is not None:
      ax.bar(x, mean, width * 0.9, yerr=std or 0.0, capsize=3, color=colors[m % len(colors)],
             label=label(r["method"]))
    else:  # never a bar for a cell without finished runs
      ax.text(x, 1, f"{r['method']}: no run", rotation=90, ha="center", va="bottom", fontsize=7)
    if paper is not None:
      ax.plot([x - width * 0.45, x + width * 0.45], [paper, paper], color="black", linewidth=2,
              label=label("paper"))
  ax.set_xticks(range(len(pairs)), pairs, rotation=20, ha="right", fontsize=8)
  ax.set_ylabel("top-1 (%)")
  ax.set_title("kdjax best-epoch mean ± std over seeds (bars) vs published (black ticks)", fontsize=10)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Writes the PNGs; prints their paths."""
  p = argparse.ArgumentParser(prog="experiments/plot.py", description=__doc__.split("\n\n")[0])
  p.add_argument("workdir", help="a reproduce.py --workdir")
  p.add_argument("--out", default=None, help="output folder (default WORKDIR/plots)")
  args = p.parse_args(argv)
  root = os.path.abspath(args.workdir)
  out = os.path.abspath(args.out or os.path.join(root, "plots"))
  os.makedirs(out, exist_ok=True)
  written = []
  for (method, cell), curves in sorted(find_runs(root).items()):
    written.append(plot_curves(run_title(root, method, cell), curves,
                               os.path.join(out, f"curves_{method}_{cell}.png")))
  table = os.path.join(root, "table.csv")
  if os.path.exists(table):
    written.append(plot_table(read_table(table), os.path.join(out, "table.png")))
  else:
    print(f"plot: no {table} (run experiments/reproduce.py first); only the curves are drawn",
          file=sys.stderr)
  if not written:
    print(f"plot: nothing to plot under {root}", file=sys.stderr)
    return 1
  for path in written:
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
