"""experiments/reproduce.py and experiments/plot.py: plan, run, resume, table, plots.

Most tests drive the runner with a stand-in trainer (`_FAKE_TRAINER`, written to
tmp_path) that honours kdjax.main's command line and writes results.json and
metrics.jsonl the way kdjax/train/loop.py does, so a 2-method x 2-seed table runs in
seconds. `test_real_trainer_on_mocked_cifar` runs one real job through
tests/mocked_main.py to pin the contract between the runner and the trainer.
"""
import csv
import glob
import json
import os
import statistics
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import plot  # noqa: E402
import reproduce  # noqa: E402
from tests import parity  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Mimics `python -m kdjax.main` (the fields the runner relies on) without training.
_FAKE_TRAINER = r'''
import hashlib, json, os, sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
config_path, _, arg = args["config"].partition(":")
workdir, seed = args["workdir"], int(args["config.seed"])
epochs = int(args.get("config.epochs", 240))
method = "vanilla" if config_path.endswith("teacher_cifar.py") else os.path.basename(config_path)[:-len("_cifar.py")]
calls = os.environ["FAKE_CALLS"]

def note(event):
  with open(calls, "a") as f:
    f.write(json.dumps({"event": event, "workdir": workdir, "time": time.time()}) + "\n")

note("start")
teacher = args.get("config.teacher.checkpoint")
if teacher and not os.path.exists(os.path.join(teacher, "results.json")):
  print(f"kdjax: error: teacher checkpoint {teacher!r} does not exist", file=sys.stderr)
  sys.exit(2)
if os.environ.get("FAKE_FAIL") and os.environ["FAKE_FAIL"] in arg:
  print("kdjax: error: simulated failure", file=sys.stderr)
  sys.exit(1)
if os.path.exists(os.path.join(workdir, "results.json")):
  print("nothing to do")
  sys.exit(0)
time.sleep(0.2)
os.makedirs(workdir, exist_ok=True)
h = int(hashlib.sha256(f"{method}:{arg}:{seed}".encode()).hexdigest(), 16)
top1 = [round(20 + 3 * e + ((h >> (7 * e)) % 1000) / 100, 2) for e in range(epochs)]
with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
  for e, t in enumerate(top1):
    f.write(json.dumps({"epoch": e + 1, "test_top1": t, "train_loss": 4.6 / (e + 1)}) + "\n")
best = max(top1)
names = arg.split(",")
results = {"method": method, "teacher": names[0] if len(names) == 2 else None, "student": names[-1],
           "dataset": "cifar100", "epochs": epochs, "seed": seed, "best_top1": best,
           "best_epoch": top1.index(best) + 1, "last_top1": top1[-1], "teacher_top1": None,
           "wall_seconds": 0.2, "images_per_second": 1.0, "devices": "1 x fake"}
json.dump(results, open(os.path.join(workdir, "results.json"), "w"))
note("end")
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
  """(launcher, calls-log path) of the stand-in trainer."""
  script = tmp_path / "fake_main.py"
  script.write_text(_FAKE_TRAINER)
  calls = tmp_path / "calls.jsonl"
  monkeypatch.setenv("FAKE_CALLS", str(calls))
  monkeypatch.delenv("FAKE_FAIL", raising=False)
  return f"{sys.executable} {script}", calls


def _calls(path):
  return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def _csv(root):
  with open(os.path.join(root, "table.csv"), newline="") as f:
    return list(csv.DictReader(f))


def _results(root, method, cell, seeds):
  return [json.load(open(os.path.join(root, "runs", method, cell, f"seed{s}", "results.json")))
          for s in seeds]


def test_methods_are_discovered_with_their_reported_metric():
  found = reproduce.available_methods()
  assert {"kd", "dkd"} <= set(found) and "teacher" not in found
  kd = reproduce.method_spec("kd", reproduce.TABLES["cifar100_same_arch"])
  dkd = reproduce.method_spec("dkd", reproduce.TABLES["cifar100_same_arch"])
  assert (kd.metric, dkd.metric) == ("last", "best")
  assert "resnet110,resnet20" in kd.pairs and "resnet110,resnet20" not in dkd.pairs
  assert dkd.reported["resnet32x4,resnet8x4"] == 76.32  # from the config, the one place
  vanilla = reproduce.method_spec("vanilla", reproduce.TABLES["cifar100_diff_arch"])
  assert vanilla.reported["resnet32x4,ShuffleV2"] == 71.82


def test_print_commands_and_dry_run(tmp_path, capsys):
  root = str(tmp_path / "table")
  base = ["--table=cifar100_same_arch", "--methods=kd,dkd,vanilla", "--seeds=3", f"--workdir={root}",
          "--override=config.epochs=2"]
  assert reproduce.main([*base, "--print-commands"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  # 5 distinct teachers; kd 7 pairs, dkd 6 (no resnet110,resnet20), vanilla 6 distinct students; x3 seeds.
  assert len(lines) == 5 + 3 * (7 + 6 + 6)
  assert all(line.startswith("python -m kdjax.main --config=configs/") for line in lines)
  assert all("--config.epochs=2" in line for line in lines)
  teachers = [line for line in lines if "teacher_cifar.py" in line and "/teachers/" in line]
  assert lines[:5] == teachers  # teachers first: the students read their checkpoints
  assert f"--workdir={root}/teachers/cifar100_resnet56 " in teachers[0]
  kd = [line for line in lines if "kd_cifar.py:resnet56,resnet20" in line and "dkd" not in line]
  assert [f"--workdir={root}/runs/kd/resnet56_resnet20/seed{s}" in kd[s] for s in range(3)] == [True] * 3
  assert all(f"--config.teacher.checkpoint={root}/teachers/cifar100_resnet56" in line for line in kd)
  assert all(f"--config.seed={s}" in kd[s] for s in range(3))
  assert not any("dkd_cifar.py:resnet110,resnet20" in line for line in lines)
  assert sum("runs/vanilla/resnet20/" in line for line in lines) == 3  # one run per student, not per pair

  assert reproduce.main([*base, "--print-commands", "--only=students",
                         "--launcher=python tests/mocked_main.py"]) == 0
  students = capsys.readouterr().out.strip().splitlines()
  assert len(students) == 57 and all(s.startswith("python tests/mocked_main.py --config=") for s in students)

  assert reproduce.main([*base, "--dry-run"]) == 0
  out = capsys.readouterr().out
  assert "# dkd: no config for resnet110,resnet20 (no cell)" in out
  assert "[teacher] teachers/cifar100_vgg13 (pending)" in out
  assert "[student] runs/dkd/vgg13_vgg8/seed2 (pending)" in out
  assert "# 62 job(s); nothing run (--dry-run)" in out
  assert not os.path.exists(root)  # nothing written


def test_concurrent_jobs_share_the_accelerator_memory():
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in reproduce.job_env(1, {})
  assert reproduce.job_env(2, {})["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.45"
  assert reproduce.job_env(3, {})["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.30"
  # A memory setting of the user's wins.
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in reproduce.job_env(4, {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"})


@pytest.mark.parametrize("flag,message", [
    ("--methods=kd,nosuch", "unknown method 'nosuch'"),
    ("--override=config.seed=1", "config.seed is set by the runner"),
    ("--override=epochs=1", "expected config.FIELD=VALUE"),
    ("--pairs=resnet32x4,ShuffleV1", "not in cifar100_same_arch"),
])
def test_bad_input_is_refused(tmp_path, capsys, flag, message):
  assert reproduce.main([f"--workdir={tmp_path}", "--print-commands", flag]) == 2
  assert message in capsys.readouterr().err


def test_two_methods_two_seeds_table_resume_and_plots(tmp_path, fake, capsys):
  launcher, calls = fake
  root = str(tmp_path / "table")
  args = ["--table=cifar100_same_arch", "--methods=kd,dkd", "--seeds=2", f"--workdir={root}",
          "--pairs=resnet56,resnet20;resnet110,resnet20", "--jobs=2", "--override=config.epochs=3",
          f"--launcher={launcher}"]
  assert reproduce.main(args) == 0
  events = _calls(calls)
  starts = [e for e in events if e["event"] == "start"]
  assert len(starts) == 2 + 2 * 2 + 1 * 2  # 2 teachers, kd on 2 pairs, dkd on 1 pair; 2 seeds
  teacher_ends = [e["time"] for e in events if e["event"] == "end" and "/teachers/" in e["workdir"]]
  student_starts = [e["time"] for e in starts if "/runs/" in e["workdir"]]
  assert len(teacher_ends) == 2 and max(teacher_ends) <= min(student_starts)
  # Never more than --jobs trainers at once.
  timeline = sorted((e["time"], 1 if e["event"] == "start" else -1) for e in events)
  running = [sum(d for _, d in timeline[:i + 1]) for i in range(len(timeline))]
  assert max(running) <= 2

  rows = {(r["method"], r["teacher"], r["student"]): r for r in _csv(root)}
  assert set(rows) == {("teacher", "resnet56", "resnet20"), ("teacher", "resnet110", "resnet20"),
                       ("kd", "resnet56", "resnet20"), ("kd", "resnet110", "resnet20"),
                       ("dkd", "resnet56", "resnet20")}  # no dkd cell: its config lacks the pair
  for method, teacher, paper in [("kd", "resnet56", 70.66), ("kd", "resnet110", 70.67),
                                 ("dkd", "resnet56", 71.97)]:
    row, runs = rows[(method, teacher, "resnet20")], _results(root, method, f"{teacher}_resnet20", (0, 1))
    best, last = [r["best_top1"] for r in runs], [r["last_top1"] for r in runs]
    assert float(row["best_mean"]) == pytest.approx(statistics.mean(best), abs=1e-4)
    assert float(row["best_std"]) == pytest.approx(statistics.stdev(best), abs=1e-4)
    assert float(row["last_mean"]) == pytest.approx(statistics.mean(last), abs=1e-4)
    assert float(row["last_std"]) == pytest.approx(statistics.stdev(last), abs=1e-4)
    assert float(row["paper_top1"]) == paper and row["n"] == "2" and row["epochs"] == "3"
    assert float(row["delta_best"]) == pytest.approx(statistics.mean(best) - paper, abs=1e-3)
  assert rows[("kd", "resnet56", "resnet20")]["paper_metric"] == "last"
  assert rows[("dkd", "resnet56", "resnet20")]["paper_metric"] == "best"
  assert float(rows[("teacher", "resnet56", "resnet20")]["paper_top1"]) == 72.34
  table_md = open(os.path.join(root, "table.md")).read()
  assert "70.66 (last)" in table_md and "71.97 (best)" in table_md
  assert "not comparable with the paper" in table_md  # 3 epochs, not 240

  # Rerun: every job is skipped, nothing is launched, no result is rewritten.
  results = sorted(os.path.join(d, "results.json") for d, _, files in os.walk(root) if "results.json" in files)
  mtimes = [os.stat(p).st_mtime_ns for p in results]
  log_before = open(os.path.join(root, "reproduce.log")).read()
  assert reproduce.main(args) == 0
  assert len(_calls(calls)) == len(events)
  assert [os.stat(p).st_mtime_ns for p in results] == mtimes
  new_log = open(os.path.join(root, "reproduce.log")).read()[len(log_before):]
  assert new_log.count(" skip ") == 8 and " start " not in new_log

  # Asking for a third seed and for vanilla without running: unfinished cells are marked, not filled.
  assert reproduce.main([*args, "--report-only", "--seeds=3", "--methods=kd,dkd,vanilla"]) == 0
  rows = {(r["method"], r["teacher"]): r for r in _csv(root)}
  assert rows[("kd", "resnet56")]["n"] == "2" and rows[("kd", "resnet56")]["n_requested"] == "3"
  assert rows[("vanilla", "resnet56")]["best_mean"] == "" and rows[("vanilla", "resnet56")]["n"] == "0"
  table_md = open(os.path.join(root, "table.md")).read()
  assert "*no finished run* (0 of 3)" in table_md and "(n=2 of 3)" in table_md
  assert len(_calls(calls)) == len(events)

  # Plots: one curve figure per method x pair and per teacher, and the table's bars.
  capsys.readouterr()
  assert plot.main([root]) == 0
  written = capsys.readouterr().out.split()
  names = sorted(os.path.basename(p) for p in written)
  assert names == sorted(["curves_kd_resnet56_resnet20.png", "curves_kd_resnet110_resnet20.png",
                          "curves_dkd_resnet56_resnet20.png", "curves_teacher_cifar100_resnet56.png",
                          "curves_teacher_cifar100_resnet110.png", "table.png"])
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  for path in written:
    assert open(path, "rb").read(8) == PNG_SIGNATURE
    image = plt.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_failed_teacher_blocks_its_students_and_other_length_runs_are_refused(tmp_path, fake, monkeypatch):
  launcher, calls = fake
  root = str(tmp_path / "table")
  args = ["--methods=kd", "--seeds=1", f"--workdir={root}", "--pairs=resnet56,resnet20;resnet110,resnet20",
          "--override=config.epochs=2", f"--launcher={launcher}"]
  monkeypatch.setenv("FAKE_FAIL", "resnet110")
  assert reproduce.main(args) == 1
  log = open(os.path.join(root, "reproduce.log")).read()
  assert "FAILED teachers/cifar100_resnet110" in log and "blocked runs/kd/resnet110_resnet20/seed0" in log
  assert os.path.exists(os.path.join(root, "runs/kd/resnet56_resnet20/seed0/results.json"))
  rows = {(r["method"], r["teacher"]): r for r in _csv(root)}
  assert rows[("kd", "resnet110")]["n"] == "0" and rows[("kd", "resnet56")]["n"] == "1"

  # The finished 2-epoch runs are not silently reused (or counted) for a 4-epoch table.
  monkeypatch.delenv("FAKE_FAIL")
  n_calls = len(_calls(calls))
  assert reproduce.main([*args[:-2], "--override=config.epochs=4", f"--launcher={launcher}"]) == 1
  assert "REFUSED runs/kd/resnet56_resnet20/seed0" in open(os.path.join(root, "reproduce.log")).read()
  rows = {(r["method"], r["teacher"]): r for r in _csv(root)}
  assert rows[("kd", "resnet56")]["n"] == "0" and rows[("kd", "resnet56")]["ignored_runs"] == "1"
  # Only the failed teacher (now fixed) and its student ran.
  assert {e["workdir"][len(root) + 1:] for e in _calls(calls)[n_calls:]} == {
      "teachers/cifar100_resnet110", "runs/kd/resnet110_resnet20/seed0"}


@pytest.mark.long
def test_real_trainer_two_methods_two_seeds_on_mocked_cifar(tmp_path, monkeypatch, capsys):
  """KD and DKD x 2 seeds (vgg13 -> vgg8) with the real trainer through tests/mocked_main.py.

  The table's means/stds equal those of the runs' results.json, a rerun runs nothing, and the
  plots are PNGs. The teacher directory is made here from an untrained vgg13 (its job is then
  skipped as finished), which keeps the test to four short trainer processes on CPU.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from kdjax import checkpoint, models  # pylint: disable=import-outside-toplevel
  from kdjax.data import cifar  # pylint: disable=import-outside-toplevel
  root = str(tmp_path / "table")
  teacher_dir = os.path.join(root, "teachers", "cifar100_vgg13")
  variables = models.get("vgg13", num_classes=100).init(
      jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
  mean, std = cifar.MEAN_STD["cifar100"]
  checkpoint.save_model(os.path.join(teacher_dir, "model"), variables,
                        {"arch": "vgg13", "num_classes": 100, "dataset": "cifar100", "mean": list(mean),
                         "std": list(std), "epoch": 1, "test_top1": 1.0, "method": "vanilla"})
  json.dump({"method": "vanilla", "student": "vgg13", "epochs": 1, "seed": 0, "best_top1": 1.0,
             "best_epoch": 1, "last_top1": 1.0}, open(os.path.join(teacher_dir, "results.json"), "w"))

  monkeypatch.setenv("KDJAX_MOCK_EXAMPLES", "64")
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", parity.cli_env()["XLA_FLAGS"])  # the jobs compile much, train 2 epochs
  args = ["--methods=kd,dkd", "--seeds=2", "--pairs=vgg13,vgg8", f"--workdir={root}", "--jobs=2",
          "--launcher=python tests/mocked_main.py", "--override=config.epochs=2",
          "--override=config.batch_size=32", "--override=config.eval_batch_size=64",
          "--override=config.teacher.train_epochs=1"]
  assert reproduce.main(args) == 0, open(os.path.join(root, "logs/runs/kd/vgg13_vgg8/seed0.log")).read()[-3000:]
  rows = {r["method"]: r for r in _csv(root)}
  for method in ("kd", "dkd"):
    results = [json.load(open(os.path.join(root, "runs", method, "vgg13_vgg8", f"seed{k}", "results.json")))
               for k in range(2)]
    assert [(r["method"], r["teacher"], r["student"], r["epochs"], r["seed"]) for r in results] == [
        (method, "vgg13", "vgg8", 2, k) for k in range(2)]
    for metric in ("best", "last"):
      values = [r[f"{metric}_top1"] for r in results]
      assert float(rows[method][f"{metric}_mean"]) == pytest.approx(statistics.mean(values), abs=1e-4)
      assert float(rows[method][f"{metric}_std"]) == pytest.approx(statistics.stdev(values), abs=1e-4)
    assert rows[method]["n"] == "2"
  assert float(rows["kd"]["paper_top1"]) == 72.98 and float(rows["dkd"]["paper_top1"]) == 74.68
  assert "skip teachers/cifar100_vgg13" in open(os.path.join(root, "reproduce.log")).read()
  # A rerun finds every job finished and runs nothing.
  stamps = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(root, "runs", "*", "*", "*", "results.json"))}
  assert len(stamps) == 4 and reproduce.main(args) == 0
  assert stamps == {p: os.path.getmtime(p) for p in stamps}
  records = plot.read_metrics(os.path.join(root, "runs", "kd", "vgg13_vgg8", "seed0", "metrics.jsonl"))
  assert [r["epoch"] for r in records] == [1, 2] and "train_loss" in records[0]
  capsys.readouterr()
  assert plot.main([root]) == 0
  assert all(open(p, "rb").read(8) == PNG_SIGNATURE for p in capsys.readouterr().out.split())


def test_seed_paper_and_imagenet_tables_plan_their_teachers(tmp_path, capsys):
  """ImageNet jobs read the configs' teacher checkpoints; SFTN plans one phase-1 teacher per pair;
  online methods have no teacher and take the networks as their config argument."""
  assert reproduce.main(["--table=imagenet", "--seeds=1", f"--workdir={tmp_path}/i", "--dry-run"]) == 0
  out = capsys.readouterr().out
  assert "[teacher]" not in out and "configs/dkd_imagenet.py:imagenet_resnet50,imagenet_mobilenetv1" in out
  assert "--config.teacher.checkpoint" not in out and out.count("[student]") == 4
  assert reproduce.main(["--table=sftn", "--seeds=1", "--pairs=vgg13,vgg8", f"--workdir={tmp_path}/s",
                         "--dry-run"]) == 0
  out = capsys.readouterr().out
  assert "configs/sftn_cifar.py:vgg13,vgg8,teacher --workdir=" + f"{tmp_path}/s/teachers/cifar100_vgg13_sftn_vgg8" in out
  assert "configs/teacher_cifar.py:vgg13" in out  # the standard teacher of the kd row
  assert f"--config.teacher.checkpoint={tmp_path}/s/teachers/cifar100_vgg13_sftn_vgg8" in out
  from kdjax import recipes  # pylint: disable=import-outside-toplevel
  phase1 = reproduce.load_config_module("configs/sftn_cifar.py").get_config("vgg13,vgg8,teacher")
  assert (phase1.method, phase1.model, phase1.sftn.student) == ("sftn", "vgg13", "vgg8")
  del recipes
  assert reproduce.main(["--table=afd", "--seeds=2", f"--workdir={tmp_path}/a", "--dry-run"]) == 0
  out = capsys.readouterr().out
  assert "[teacher]" not in out and out.count("[student]") == 6
  assert "configs/afd_cifar.py:resnet32,resnet32 --workdir=" in out


def test_reviewkd_ablation_dry_run_lists_every_ablation_on_both_pairs(tmp_path, capsys):
  """Default pairs resnet32x4->resnet8x4 and wrn_40_2->wrn_16_2, one job per ablation x pair x seed,
  each the ReviewKD config with the ablation appended to the pair; teachers from teacher_cifar.py."""
  root = str(tmp_path / "abl")
  rows = reproduce.tables.ABLATION_ROWS["reviewkd_cifar"]
  assert rows[0] == "release" and len(rows) == 9
  assert reproduce.main(["--table=reviewkd_ablation", "--seeds=2", f"--workdir={root}", "--dry-run"]) == 0
  out = capsys.readouterr().out
  assert f"# {2 + 9 * 2 * 2} job(s); nothing run (--dry-run)" in out
  assert "[teacher] teachers/cifar100_resnet32x4 (pending)" in out
  assert "[teacher] teachers/cifar100_wrn_40_2 (pending)" in out
  assert "resnet56" not in out  # the report's component pair only on request
  for name in rows:
    for pair, cell in [("resnet32x4,resnet8x4", "resnet32x4_resnet8x4"), ("wrn_40_2,wrn_16_2", "wrn_40_2_wrn_16_2")]:
      for seed in (0, 1):
        assert f"[student] runs/{name}/{cell}/seed{seed} (pending)" in out
        assert (f"--config=configs/reviewkd_cifar.py:{pair},{name} --workdir={root}/runs/{name}/{cell}/"
                f"seed{seed} ") in out
  assert reproduce.main(["--table=reviewkd_ablation", "--seeds=1", f"--workdir={root}", "--print-commands",
                         "--methods=no_abf,none", "--pairs=resnet56,resnet20"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 3 and "teacher_cifar.py:resnet56" in lines[0]
  assert "reviewkd_cifar.py:resnet56,resnet20,no_abf " in lines[1]
  assert f"--config.teacher.checkpoint={root}/teachers/cifar100_resnet56" in lines[2]
  assert reproduce.main(["--table=reviewkd_ablation", f"--workdir={root}", "--dry-run", "--methods=nosuch"]) == 2
  assert "unknown ablation 'nosuch'" in capsys.readouterr().err
  assert not os.path.exists(root)


def test_reviewkd_ablation_table_with_the_reports_numbers(tmp_path, fake):
  """The baseline row first, the MLRC numbers where the report has them (— elsewhere)."""
  launcher, _ = fake
  root = str(tmp_path / "abl")
  args = ["--table=reviewkd_ablation", "--methods=release,no_abf,feed_output", "--seeds=1",
          f"--workdir={root}", "--pairs=resnet32x4,resnet8x4;resnet56,resnet20",
          "--override=config.epochs=2", f"--launcher={launcher}"]
  assert reproduce.main(args) == 0
  rows = _csv(root)
  assert [(r["method"], r["teacher"]) for r in rows] == [
      ("teacher", "resnet32x4"), ("release", "resnet32x4"), ("no_abf", "resnet32x4"), ("feed_output", "resnet32x4"),
      ("teacher", "resnet56"), ("release", "resnet56"), ("no_abf", "resnet56"), ("feed_output", "resnet56")]
  paper = {(r["method"], r["teacher"]): (r["paper_top1"], r["paper_metric"]) for r in rows}
  assert paper[("release", "resnet32x4")] == ("76.0200", "best")
  assert paper[("release", "resnet56")] == ("71.7900", "best")
  assert paper[("no_abf", "resnet56")] == ("71.5100", "unknown")
  assert paper[("no_abf", "resnet32x4")][0] == "" and paper[("feed_output", "resnet56")][0] == ""
  assert all(r["n"] == "1" for r in rows)
  table_md = open(os.path.join(root, "table.md")).read()
  assert "ReviewKD ablations" in table_md and "λ = 0.7" in table_md


def test_vmap_seeds_plans_one_job_per_cell_and_keeps_prestage_methods_per_seed(tmp_path, capsys):
  """--vmap-seeds: kd's 3 seeds are one job (--config.seeds=0,1,2) into the cell directory whose
  seed<k>/ are the per-seed jobs' workdirs; ab (a prestage) keeps one job per seed."""
  args = ["--table=cifar100_same_arch", "--methods=kd,ab", "--pairs=vgg13,vgg8", "--seeds=3",
          f"--workdir={tmp_path}", "--print-commands", "--only=students"]
  assert reproduce.main([*args, "--vmap-seeds"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  kd = [l for l in lines if "kd_cifar.py" in l]
  ab = [l for l in lines if "ab_cifar.py" in l]
  assert len(kd) == 1 and "--config.seeds=0,1,2" in kd[0] and "--config.seed=" not in kd[0]
  assert f"--workdir={tmp_path}/runs/kd/vgg13_vgg8 " in kd[0] + " "
  assert len(ab) == 3 and all("--config.seeds" not in l for l in ab)
