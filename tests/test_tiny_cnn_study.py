"""configs/tiny_cnn_cifar10.py (the tiny-CNN DKD study, docs/sources.md [S4]) and its runner table."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import reproduce  # noqa: E402
from repro import tables  # noqa: E402

from kdjax import recipes  # noqa: E402
from kdjax.errors import UserError  # noqa: E402

study = reproduce.load_config_module("configs/tiny_cnn_cifar10.py")


def test_protocol_common_to_every_variant():
  for name in (*study.ROWS, "teacher"):
    c = study.get_config(name)
    assert (c.data.name, c.batch_size, c.epochs) == ("cifar10", 64, 30)
    # DKD above T = 1: LR / T (the config's docstring says why); everything else 0.01.
    lr = 0.01 / c.dkd.temperature if name.startswith("dkd_") and c.dkd.temperature > 1 else 0.01
    assert (c.optim.lr, c.optim.momentum, tuple(c.optim.lr_milestones)) == (lr, 0.9, ())
  assert [study.get_config(f"dkd_t{t}_a1_b2").optim.lr for t in (0.5, 1, 2, 4, 8)] == \
      [0.01, 0.01, 0.005, 0.0025, 0.00125]
  assert study.get_config("kd_t5").optim.lr == 0.01
  c = study.get_config("nokd")
  assert (c.teacher.arch, c.teacher.train_epochs, c.teacher.train_lr) == ("simple_cnn_teacher", 30, 0.01)
  assert c.teacher.auto_workdir == "runs/teachers/{dataset}_{arch}"


def test_variants_set_what_their_names_say():
  assert study.get_config("nokd").method == "vanilla"
  assert study.get_config("nokd").model == "simple_cnn_student"
  teacher = study.get_config("teacher")
  assert (teacher.method, teacher.model) == ("vanilla", "simple_cnn_teacher")
  # The teacher variant is exactly the recipe the auto-teacher uses.
  # (The method nodes kd/dkd of a vanilla run are never read.)
  for name in ("nokd", "kd_t1", "dkd_t4_a1_b2"):
    auto = recipes.teacher_config(study.get_config(name)).to_dict()
    assert {k: v for k, v in teacher.to_dict().items() if k not in ("kd", "dkd")} == \
        {k: v for k, v in auto.items() if k not in ("kd", "dkd")}
  kd1, kd5 = study.get_config("kd_t1"), study.get_config("kd_t5")
  assert (kd1.method, kd1.kd.temperature, kd5.kd.temperature) == ("kd", 1.0, 5.0)
  assert (kd1.kd.ce_weight, kd1.kd.kd_weight) == (0.5, 0.5)  # the study's alpha = 0.5
  kd = study.get_config("kd_t4_a0.9")
  assert (kd.kd.ce_weight, kd.kd.kd_weight) == pytest.approx((0.1, 0.9))
  dkd = study.get_config("dkd_t1_a0.7_b0.25")
  assert (dkd.method, dkd.dkd.temperature, dkd.dkd.alpha, dkd.dkd.beta) == ("dkd", 1.0, 0.7, 0.25)
  assert (dkd.dkd.ce_weight, dkd.dkd.warmup_epochs) == (1.0, 2.5)
  hot = study.get_config("dkd_t4_a1_b2")
  assert (hot.dkd.temperature, hot.dkd.alpha, hot.dkd.beta) == (4.0, 1.0, 2.0)
  # Rows differ from each other only in method and its node.
  for a, b in [("kd_t1", "kd_t5"), ("dkd_t1_a0.7_b0.25", "dkd_t1_a1_b0.25")]:
    da, db = study.get_config(a).to_dict(), study.get_config(b).to_dict()
    assert [k for k in da if da[k] != db[k]] == [a.split("_")[0]]


def test_table_rows_and_reported_numbers():
  assert len(study.ROWS) == 3 + 2 * 7 + 2 and len(set(study.ROWS)) == len(study.ROWS)
  reported = tables.REPORTED["tiny_cnn_cifar10"]
  assert set(reported) <= set(study.ROWS)
  assert (reported["nokd"], reported["kd_t1"], reported["kd_t5"]) == (56.74, 59.87, 57.92)
  assert reported["dkd_t1_a0.7_b0.25"] == 59.27 and reported["dkd_t1_a1_b2.5"] == 36.71
  assert "dkd_t1_a1_b0.25" not in reported  # the study has no such run
  for name in study.ROWS:
    study.get_config(name)  # every row parses
  assert reproduce.TABLES["tiny_cnn_dkd"] == (f"{study.TEACHER},{study.STUDENT}",)


def test_a_row_name_is_shorthand_for_the_config_grammar():
  for short, long in [("dkd_t4_a1_b2", "dkd,t=4,alpha=1,beta=2"), ("kd_t4_a0.9", "kd,t=4,alpha=0.9"),
                      ("kd_t5", "kd,t=5")]:
    assert study.get_config(short).to_dict() == study.get_config(long).to_dict()
  with pytest.raises(UserError, match="valid: nokd, teacher"):
    study.get_config("dkd,t=4,alpha=1,gamma=2")


@pytest.mark.parametrize("bad", ["kd", "dkd_t1_a1", "kd_t0", "kd_t1_a1.5", "vanilla", "dkd_t1_a0.7_b0.25x"])
def test_unknown_variant_lists_the_valid_ones(bad):
  with pytest.raises(UserError, match="valid: nokd, teacher") if bad not in ("kd_t0", "kd_t1_a1.5") \
      else pytest.raises(UserError):
    study.get_config(bad)


def test_dry_run_of_the_table(tmp_path, capsys):
  root = str(tmp_path / "tiny")
  base = ["--table=tiny_cnn_dkd", "--seeds=2", f"--workdir={root}"]
  assert reproduce.main([*base, "--print-commands"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 1 + 2 * 19
  assert lines[0].startswith("python -m kdjax.main --config=configs/tiny_cnn_cifar10.py:teacher "
                             f"--workdir={root}/teachers/cifar10_simple_cnn_teacher ")
  assert sum(":nokd " in line for line in lines) == 2
  assert not any("teacher.checkpoint" in line for line in lines if ":nokd " in line)
  dkd = [line for line in lines if ":dkd_t1_a0.7_b0.25 " in line]
  assert len(dkd) == 2 and all(f"--config.teacher.checkpoint={root}/teachers/cifar10_simple_cnn_teacher"
                               in line for line in dkd)
  assert f"--workdir={root}/runs/dkd_t1_a0.7_b0.25/simple_cnn_teacher_simple_cnn_student/seed1" in dkd[1]

  digits = [*base, "--override=config.data.name=digits", "--override=config.epochs=3",
            "--override=config.teacher.train_epochs=5", "--methods=nokd,kd_t5,dkd_t4_a1_b2"]
  assert reproduce.main([*digits, "--dry-run"]) == 0
  out = capsys.readouterr().out
  assert "[teacher] teachers/digits_simple_cnn_teacher (pending)" in out
  assert "--config.epochs=5" in out.splitlines()[1]  # the teacher keeps its own length
  assert "[student] runs/kd_t5/simple_cnn_teacher_simple_cnn_student/seed1 (pending)" in out
  assert "# 7 job(s); nothing run (--dry-run)" in out
  assert not os.path.exists(root)


@pytest.mark.parametrize("methods,message", [("nokd,kd_t", "unknown tiny-CNN variant 'kd_t'"),
                                             ("teacher", "is the teacher job")])
def test_bad_rows_are_refused(tmp_path, capsys, methods, message):
  assert reproduce.main(["--table=tiny_cnn_dkd", f"--methods={methods}", f"--workdir={tmp_path}",
                         "--dry-run"]) == 2
  assert message in capsys.readouterr().err
