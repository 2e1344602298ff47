"""The table: cells read from the runs' results.json, written as table.md and table.csv."""
from __future__ import annotations

import csv
import dataclasses
import datetime
import math
import os
import statistics
from typing import Optional, Sequence

from . import tables
from .jobs import Job, run_workdir, teacher_workdir
from .scheduler import read_results
from .specs import MethodSpec

@dataclasses.dataclass
class Cell:
  """One method x pair cell: the finished runs' numbers and the published one."""
  method: str
  teacher: str
  student: str
  paper: Optional[float]
  metric: str
  requested: int
  seeds: list[int] = dataclasses.field(default_factory=list)
  best: list[float] = dataclasses.field(default_factory=list)
  last: list[float] = dataclasses.field(default_factory=list)
  epochs: list[int] = dataclasses.field(default_factory=list)
  devices: list[str] = dataclasses.field(default_factory=list)
  ignored: int = 0               # finished runs of another length than the plan's (not counted)
  workdirs: list[str] = dataclasses.field(default_factory=list)
  note: str = ""                 # on the published number (e.g. the study's NaN runs)


def mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
  """(mean, sample std); std is None below two values, both None for none."""
  if not values:
    return None, None
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def collect(specs: Sequence[MethodSpec], table_pairs: Sequence[str], seeds: int, root: str,
            dataset: str, jobs: Sequence[Job] = ()) -> list[Cell]:
  """The cells of the table, read from the runs' results.json: a teacher row, then one per method.

  A run whose length differs from its planned job's (`jobs`) is left out of the cell, so a
  shortened test run is never averaged with full-length ones.
  """
  expected = {j.workdir: j.epochs for j in jobs}
  cells = []
  for pair in table_pairs:
    teacher, student = pair.split(",")
    cell = Cell("teacher", teacher, student, tables.TEACHER_REPORTED.get(teacher), tables.METHOD_METRIC["teacher"], 1)
    workdir = teacher_workdir(root, dataset, teacher)
    _add(cell, 0, workdir, expected.get(workdir))
    cells.append(cell)
    for spec in specs:
      if pair not in spec.pairs:
        continue  # the method's config has no such pair: no cell
      cell = Cell(spec.name, teacher, student, spec.reported.get(pair), spec.metric, seeds,
                  note=spec.notes.get(pair, ""))
      for seed in range(seeds):
        workdir = run_workdir(root, spec.name, pair, seed)
        # A cell trained as one program of all its seeds: its job's workdir is seed<k>/'s parent.
        _add(cell, seed, workdir, expected.get(workdir, expected.get(os.path.dirname(workdir))))
      cells.append(cell)
  return cells


def _add(cell: Cell, seed: int, workdir: str, expected_epochs: Optional[int]) -> None:
  """Adds the numbers of the run in `workdir` to `cell` (nothing for an unfinished or other-length one)."""
  results = read_results(workdir)
  if results is None:
    return
  if expected_epochs is not None and results.get("epochs") != expected_epochs:
    cell.ignored += 1
    return
  cell.seeds.append(seed)
  cell.workdirs.append(workdir)
  cell.best.append(float(results["best_top1"]))
  cell.last.append(float(results["last_top1"]))
  cell.epochs.append(int(results["epochs"]))
  if results.get("devices"):
    cell.devices.append(str(results["devices"]))


def _round(x: Optional[float]) -> str:
  return "" if x is None or math.isnan(x) else f"{x:.4f}"


def csv_rows(cells: Sequence[Cell], table: str) -> list[dict[str, str]]:
  """One CSV row per cell; empty strings where there is no number."""
  rows = []
  for c in cells:
    best_mean, best_std = mean_std(c.best)
    last_mean, last_std = mean_std(c.last)
    same = {"best": best_mean, "last": last_mean}.get(c.metric)
    rows.append({
        "table": table, "method": c.method, "teacher": c.teacher, "student": c.student,
        "paper_top1": _round(c.paper), "paper_metric": c.metric,
        "n": str(len(c.seeds)), "n_requested": str(c.requested),
        "seeds": " ".join(map(str, c.seeds)),
        "best_mean": _round(best_mean), "best_std": _round(best_std),
        "last_mean": _round(last_mean), "last_std": _round(last_std),
        "delta_best": _round(best_mean - c.paper if best_mean is not None and c.paper is not None else None),
        "delta_paper_metric": _round(same - c.paper if same is not None and c.paper is not None else None),
        "epochs": " ".join(map(str, sorted(set(c.epochs)))),
        "ignored_runs": str(c.ignored),
        "best_values": " ".join(f"{v:.2f}" for v in c.best),
        "last_values": " ".join(f"{v:.2f}" for v in c.last),
        "paper_note": c.note,
    })
  return rows


def _fmt(values: Sequence[float], requested: int) -> str:
  """'71.23 ± 0.45 (n=3)', '71.23 (n=1 of 3)', or the no-run marker; never an invented number."""
  if not values:
    return f"*no finished run* (0 of {requested})"
  mean, std = mean_std(values)
  n = f"n={len(values)}" + (f" of {requested}" if len(values) < requested else "")
  return f"{mean:.2f} ± {std:.2f} ({n})" if std is not None else f"{mean:.2f} ({n})"


def _signed(x: Optional[float]) -> str:
  return "—" if x is None else f"{x:+.2f}"


def render_markdown(cells: Sequence[Cell], table: str, seeds: int, protocol_epochs: int,
                    command_line: str, dataset: str = tables.DEFAULT_DATASET) -> str:
  """table.md: the measured cells beside the paper, with what each number is."""
  finished = len({w for c in cells for w in c.workdirs})  # teachers and vanilla runs serve several cells
  epochs = sorted({e for c in cells for e in c.epochs})
  devices = sorted({d for c in cells for d in c.devices})
  lines = [
      f"# {tables.TABLE_TITLES.get(table, table)}",
      "",
      f"kdjax measurements ({dataset} test-set top-1, %) from `{command_line}`, "
      f"written {datetime.date.today().isoformat()}; {finished} finished run(s)"
      + (f" on {', '.join(devices)}" if devices else "") + ".",
      "",
      f"* **kdjax best / last**: the best-epoch and the last-epoch top-1 of each run, mean ± sample "
      f"std over the finished seeds (n of {seeds} requested). The teacher row is its one seed-0 run; "
      "a vanilla student's runs are shared by the pairs with that student.",
      tables.PAPER_NOTES.get(table,
      "* **paper**: the published number and which epoch it is. Teacher, student (vanilla) and the "
      "RepDistiller/CRD rows (KD, FitNet, ...) are **last-epoch** numbers from the CRD paper; DKD "
      "(mdistiller) and ReviewKD are **best-epoch** numbers (docs/protocol.md §3, docs/methods.md §0.5)."),
      "* **Δ best**: kdjax best-epoch mean − paper. **Δ same metric**: the kdjax mean of the metric "
      "the paper reported − paper (the like-for-like comparison).",
  ]
  table_dataset = tables.TABLE_DATASETS.get(table, tables.DEFAULT_DATASET)
  if dataset != table_dataset:
    lines += ["", f"**These runs are on `{dataset}`, not the table's `{table_dataset}`: they are not "
                  "comparable with the published numbers, only with each other.**"]
  if epochs and epochs != [protocol_epochs]:
    lines += ["", f"**These runs are {'/'.join(map(str, epochs))} epoch(s) long, not the protocol's "
                  f"{protocol_epochs}: they check the pipeline and are not comparable with the paper.**"]
  lines += ["", "| teacher → student | method | paper (epoch) | kdjax best epoch | kdjax last epoch "
                "| Δ best | Δ same metric | epochs |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
  for c in cells:
    best_mean, _ = mean_std(c.best)
    last_mean, _ = mean_std(c.last)
    same = {"best": best_mean, "last": last_mean}.get(c.metric)
    paper = "—" if c.paper is None else f"{c.paper:.2f} ({c.metric})"
    delta_best = best_mean - c.paper if best_mean is not None and c.paper is not None else None
    delta_same = same - c.paper if same is not None and c.paper is not None else None
    epochs = "/".join(map(str, sorted(set(c.epochs)))) or "—"
    if c.ignored:
      epochs += f" ({c.ignored} run(s) of another length ignored)"
    lines.append(f"| {c.teacher} → {c.student} | {c.method} | {paper} | {_fmt(c.best, c.requested)} | "
                 f"{_fmt(c.last, c.requested)} | {_signed(delta_best)} | {_signed(delta_same)} | "
                 f"{epochs} |")
  notes = [(c, c.note) for c in cells if c.note]
  if notes:
    lines += ["", "Notes on the published numbers:", ""]
    lines += [f"* {c.method} ({c.teacher} → {c.student}): {note}" for c, note in notes]
  if table in tables.VARIANT_TABLES:
    lines += ["", f"Rows are variants of `{tables.VARIANT_TABLES[table]}` (its `ROWS`); the published "
                  "numbers are its entry in `experiments/repro/tables.py` (— where the study has none)."]
  elif table in tables.ABLATION_TABLES:
    lines += ["", f"Rows are ablations of `{tables.ABLATION_TABLES[table]}` (in the order of "
                  "`ABLATION_ROWS` in `experiments/repro/tables.py`, the baseline first); the published "
                  "numbers are its `ABLATION_REPORTED` there (— where the report has none)."]
  else:
    lines += ["", "A method has a row only for the pairs its config lists (`PAIRS` in "
                  "`configs/<method>_cifar.py`); the published numbers are that config's entry in "
                  "`REPORTED` of `experiments/repro/tables.py`."]
  return "\n".join(lines) + "\n"


def write_table(cells: Sequence[Cell], root: str, table: str, seeds: int, protocol_epochs: int,
                command_line: str, dataset: str = tables.DEFAULT_DATASET) -> tuple[str, str]:
  """Writes WORKDIR/table.md and WORKDIR/table.csv; returns their paths."""
  os.makedirs(root, exist_ok=True)
  rows = csv_rows(cells, table)
  csv_path, md_path = os.path.join(root, "table.csv"), os.path.join(root, "table.md")
  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["table"])
    writer.writeheader()
    writer.writerows(rows)
  with open(md_path, "w") as f:
    f.write(render_markdown(cells, table, seeds, protocol_epochs, command_line, dataset))
  return md_path, csv_path


