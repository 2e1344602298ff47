"""Training and evaluation, one concern per module.

* `optim`: the LR schedule, PyTorch-equivalent SGD, per-pass masks;
* `step`: `TrainState`, the pure train step and evaluation over frozen specs;
* `teachers`: which teachers a config names, loading them, their forward pass;
* `loop`: the epoch loop of a phase and its metrics writer;
* `pipeline`: the phases of a run (teachers, prestage, main, export) and `build`.

The names below are the trainer's public API (`from kdjax import train`).
"""
from kdjax.train.export import model_meta
from kdjax.train.loop import Fitter, NonFiniteLossError, Writer, new_history, raise_if_nonfinite
from kdjax.train.optim import (create_learning_rate_fn, create_optimizer, create_optimizers,
                               init_opt_state, masked)
from kdjax.train.pipeline import (Run, build, check_config, default_workdir, load_dataset, make_mesh,
                                  plan, run_name, train_and_evaluate)
from kdjax.train.step import (EvalSpec, StepSpec, TrainState, create_train_state, evaluate,
                              make_eval_fn, make_train_step, train_step)
from kdjax.train.teachers import (Teacher, TeacherInput, adapt_teacher_input, load_teacher,
                                  load_teachers, make_teacher_forward)

__all__ = [
    "EvalSpec", "Fitter", "NonFiniteLossError", "Run", "StepSpec", "Teacher", "TeacherInput",
    "TrainState", "Writer", "adapt_teacher_input", "build", "check_config", "create_learning_rate_fn",
    "create_optimizer", "create_optimizers", "create_train_state", "default_workdir", "evaluate",
    "init_opt_state", "load_dataset", "load_teacher", "load_teachers", "make_eval_fn",
    "make_mesh", "make_teacher_forward", "masked", "model_meta", "new_history", "plan",
    "raise_if_nonfinite", "run_name", "train_and_evaluate", "train_step",
]
