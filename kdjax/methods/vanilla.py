"""Plain cross-entropy training: teachers and the student baselines."""
from __future__ import annotations

import ml_collections

from kdjax.methods import base, registry


@registry.register("vanilla")
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """Cross-entropy on the labels; no teacher."""
  del cfg

  def loss(params, state, student_out, teacher_out, batch, progress):
    del params, teacher_out, progress
    ce = base.cross_entropy(student_out[0], batch["label"])
    return ce, {"loss_ce": ce}, state

  return base.Method(name="vanilla", needs_teacher=False, loss=loss)
