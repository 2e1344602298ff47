"""Runs a CIFAR-100 table of the DKD paper with kdjax and writes it beside the published numbers.

    python experiments/reproduce.py --table=cifar100_same_arch --methods=vanilla,kd,dkd \
        --seeds=3 --workdir=runs/repro_same --jobs=1

Plans one job per teacher (seed 0) and one per method x pair x seed, runs the
teachers first and then the students (N subprocesses at once), skips every job
whose workdir already holds a finished run, and writes `WORKDIR/table.md` and
`WORKDIR/table.csv`: per cell the best-epoch and last-epoch top-1 (mean, sample
std, n) over the finished seeds, the published number and the difference.

Layout of WORKDIR:
  teachers/<dataset>_<arch>/           the teachers (shared by every job of that teacher)
  runs/<method>/<teacher>_<student>/seed<k>/   the distillation runs
  runs/vanilla/<student>/seed<k>/      the student baselines (one per student, shared by its pairs)
  logs/...                             each job's stdout/stderr, same paths as above
  reproduce.log                        what this runner ran, skipped, refused or saw fail
  table.md, table.csv                  the table

A method is any `configs/<method>_cifar.py` with PAIRS; its cell exists only for the
pairs its config has, and the published numbers are its entry in `repro/tables.py`
(all tables and their numbers are data there). A *variant table* (e.g. `tiny_cnn_dkd`)
is one teacher,student pair and one config file whose argument names the row (its
`ROWS`); its `teacher` variant trains the teacher, and
`--methods` picks rows (default: all of `ROWS`). `vanilla` is the student trained alone
(`configs/teacher_cifar.py:STUDENT`). `--print-commands` prints the jobs for a
cluster queue instead (teachers first: every student line needs its teacher's run
to have finished); `--dry-run` shows the plan; `--report-only` rebuilds the table.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `repro` beside this file

from repro import tables  # noqa: E402
from repro.jobs import _config_epochs, dataset_of, parse_overrides, plan  # noqa: E402
from repro.report import collect, write_table  # noqa: E402,F401
from repro.scheduler import RunLog, command, job_env, job_state, run_jobs  # noqa: E402,F401
from repro.specs import (TEACHER_CONFIG, ablation_specs, available_methods, load_config_module,  # noqa: E402,F401
                         method_spec, variant_specs)
from repro.tables import TABLES  # noqa: E402,F401  (tests read reproduce.TABLES)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  """The command line."""
  p = argparse.ArgumentParser(
      prog="experiments/reproduce.py", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--table", choices=sorted(tables.TABLES), default="cifar100_same_arch")
  p.add_argument("--methods", default=None,
                 help="comma-separated: 'vanilla' and/or methods with a configs/<method>_cifar.py "
                      "(default kd,dkd); for a variant table (tiny_cnn_dkd) its variants "
                      "(default: all of its config's ROWS); for an ablation table "
                      "(reviewkd_ablation) its ablations (default: all of its ABLATION_ROWS)")
  p.add_argument("--pairs", action="append", default=[],
                 help="restrict the table to these pairs, 'teacher,student' (repeatable, or ';'-separated)")
  p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per cell")
  p.add_argument("--vmap-seeds", action="store_true",
                 help="train each cell's seeds as one job, one compiled program (--config.seeds); "
                      "methods with a prestage (ab, ft, fsp) keep one job per seed")
  p.add_argument("--workdir", required=True)
  p.add_argument("--jobs", type=int, default=1,
                 help="subprocesses at once (each uses every visible device; with N > 1 each gets "
                      "1/N of 90%% of a GPU's memory unless XLA_PYTHON_CLIENT_* is set)")
  p.add_argument("--override", action="append", default=[], metavar="config.FIELD=VALUE",
                 help="passed to every job as --config.FIELD=VALUE (repeatable)")
  p.add_argument("--launcher", default="python -m kdjax.main",
                 help="the trainer command; a leading 'python' runs this interpreter")
  p.add_argument("--dry-run", action="store_true", help="print the jobs and their commands, run nothing")
  p.add_argument("--print-commands", action="store_true",
                 help="print one command per job (teachers first), run nothing")
  p.add_argument("--only", choices=("all", "teachers", "students"), default="all",
                 help="with --print-commands/--dry-run: only these jobs (e.g. two dependent queue arrays)")
  p.add_argument("--report-only", action="store_true",
                 help="rebuild table.md/table.csv from the finished runs, run nothing (same flags as the run)")
  args = p.parse_args(argv)
  if args.seeds < 1:
    p.error("--seeds must be at least 1")
  return args


def table_pairs(table: str, requested: Sequence[str]) -> tuple[str, ...]:
  """The table's pairs, restricted to `requested` ('t,s' items, ';'-separated allowed) if any."""
  pairs = tables.TABLES[table]
  wanted = [w.replace(" ", "") for item in requested for w in item.split(";") if w.strip()]
  unknown = [w for w in wanted if w not in pairs]
  if unknown:
    raise ValueError(f"pair(s) {', '.join(unknown)} not in {table}; its pairs: {'; '.join(pairs)}")
  return tuple(p for p in pairs if p in wanted) if wanted else tables.TABLE_DEFAULT_PAIRS.get(table, pairs)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Plans, runs (or prints) the jobs and writes the table; exit code 1 if a job failed, 2 for bad input."""
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  root = os.path.abspath(args.workdir)
  try:
    pairs = table_pairs(args.table, args.pairs)
    overrides = parse_overrides(args.override)
    default_methods = ("" if args.table in tables.VARIANT_TABLES or args.table in tables.ABLATION_TABLES
                       else tables.TABLE_DEFAULT_METHODS.get(args.table, "kd,dkd"))
    names = list(dict.fromkeys(m.strip() for m in (args.methods or default_methods).split(",")
                               if m.strip()))
    if args.table in tables.VARIANT_TABLES:
      specs = variant_specs(args.table, names)
    elif args.table in tables.ABLATION_TABLES:
      specs = ablation_specs(args.table, names, pairs)
    else:
      specs = [method_spec(name, pairs, suffix=tables.TABLE_CONFIG_SUFFIX.get(args.table, "_cifar"))
               for name in names]
  except ValueError as e:
    print(f"reproduce: error: {e}", file=sys.stderr)
    return 2
  dataset = dataset_of(overrides, tables.TABLE_DATASETS.get(args.table, tables.DEFAULT_DATASET))
  jobs = plan(specs, args.seeds, root, overrides, tables.TABLE_DATASETS.get(args.table, tables.DEFAULT_DATASET),
              vmap_seeds=args.vmap_seeds)
  shown = [j for j in jobs if args.only == "all" or j.kind + "s" == args.only]

  if args.print_commands:
    for job in shown:
      print(command(job, args.launcher))
    return 0
  if args.dry_run:
    for spec in specs:
      missing = [p for p in pairs if p not in spec.pairs]
      if missing:
        print(f"# {spec.name}: no config for {'; '.join(missing)} (no cell)")
    for job in shown:
      print(f"[{job.kind}] {job.name} ({job_state(job)})\n    {command(job, args.launcher)}")
    print(f"# {len(shown)} job(s); nothing run (--dry-run)")
    return 0

  status: dict[str, str] = {}
  if not args.report_only:
    log = RunLog(os.path.join(root, "reproduce.log"))
    log(f"reproduce.py {' '.join(shlex.quote(a) for a in argv)}: {len(jobs)} job(s)")
    status = run_jobs(jobs, args.launcher, args.jobs, root, log)
    counts = {s: sum(v == s for v in status.values()) for s in sorted(set(status.values()))}
    log("summary: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
  if args.table in tables.VARIANT_TABLES:
    protocol_epochs = int(load_config_module(tables.VARIANT_TABLES[args.table]).EPOCHS)
  elif args.table in tables.TABLE_PROTOCOL_CONFIG:
    protocol_epochs = _config_epochs(tables.TABLE_PROTOCOL_CONFIG[args.table])
  else:
    protocol_epochs = int(load_config_module(TEACHER_CONFIG).get_config("resnet20").epochs)
  cells = collect(specs, pairs, args.seeds, root, dataset, jobs)
  md, csv_path = write_table(cells, root, args.table, args.seeds, protocol_epochs,
                             "experiments/reproduce.py " + " ".join(shlex.quote(a) for a in argv),
                             dataset)
  print(f"wrote {md} and {csv_path}")
  return 1 if any(s in ("failed", "blocked", "stale") for s in status.values()) else 0


if __name__ == "__main__":
  sys.exit(main())
