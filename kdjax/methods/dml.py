"""DML: Deep Mutual Learning (Zhang, Xiang, Hospedales, Lu; CVPR 2018).

Online: K peers (a cohort model, `config.model = 'A+B[+...]'`) trained together from
scratch, no teacher. Peer k minimises

    L_k = CE(z_k, y) + w * (1 / |P_k|) * sum_{l in P_k} T^2 * KL(softmax(z_l / T) || softmax(z_k / T))

with the peers' logits z_l constants (stop_gradient); P_k = every other peer
(`peers='all'`, DML) or only the predecessor k-1 mod K (`peers='cyclic'`, AFD's
scheme). DML's published form is T = 1, w = 1 (docs/methods.md §7.15, ⚠ unverified
summary); the KL is summed over classes and averaged over the batch like KD's.

Update scheme (`config.dml.alternate`). The paper's algorithm updates the peers one
after another within an iteration, each against the others' current predictions.
The default (False) is the common implementation: one simultaneous update of every
peer on L = sum_k L_k — with the peers as constants, d L / d theta_k = d L_k / d theta_k,
so each peer takes exactly its own step, all from the same forward pass. True runs
the original order through the trainer's `extra_updates`: the main pass moves peer 0
only, then pass k (a fresh forward at the updated parameters) moves peer k only.

The loss reads the members' outputs `student_out[1]['members']` (kdjax.models.cohort);
the run's top-1 is the cohort's ensemble, and each member's top-1 is reported too.
"""
from __future__ import annotations

from typing import Sequence

import jax
import ml_collections

from kdjax.errors import UserError
from kdjax.methods import base, kd, registry
from kdjax.models import cohort

PEER_RULES = ("all", "cyclic")


def member_outputs(student_out: base.ModelOutput, method: str) -> list[base.ModelOutput]:
  """The cohort members' `(logits, features)`; refuses a plain model with a clear error."""
  members = student_out[1].get("members") if isinstance(student_out[1], dict) else None
  if not members or len(members) < 2:
    raise UserError(f"method {method!r} trains two or more networks together: set config.model "
                    "to a cohort 'NET1+NET2[+...]' (configs/<method>_cifar.py:NET1,NET2 does)")
  return list(members)


def peers(k: int, num: int, rule: str) -> list[int]:
  """The peers member k learns from: all others, or its predecessor k-1 (mod num) when cyclic."""
  if rule == "all":
    return [l for l in range(num) if l != k]
  if rule == "cyclic":
    return [(k - 1) % num]
  raise UserError(f"unknown peer rule {rule!r}; expected one of {PEER_RULES}")


def mutual_terms(member_logits: Sequence[jax.Array], labels: jax.Array, temperature: float,
                 rule: str) -> tuple[list[jax.Array], list[jax.Array]]:
  """Per member: CE(z_k, y) and the mean over its peers of T^2 KL(p_l || p_k) (peers constant)."""
  num = len(member_logits)
  ces = [base.cross_entropy(z, labels) for z in member_logits]
  kls = []
  for k, z in enumerate(member_logits):
    group = peers(k, num, rule)
    # kd.kd_loss stops the gradient of its target: each peer is a constant for member k.
    kls.append(sum(kd.kd_loss(z, member_logits[l], temperature) for l in group) / len(group))
  return ces, kls


def mutual_loss(member_logits: Sequence[jax.Array], labels: jax.Array, temperature: float,
                kl_weight: float, rule: str = "all") -> tuple[jax.Array, dict[str, jax.Array]]:
  """sum_k [CE_k + kl_weight * KL_k] and its metrics (sums over members and each member's CE)."""
  ces, kls = mutual_terms(member_logits, labels, temperature, rule)
  metrics = {"loss_ce": sum(ces), "loss_kl": sum(kls)}
  metrics.update({f"loss_ce_member{k}": ce for k, ce in enumerate(ces)})
  return sum(ce + kl_weight * kl for ce, kl in zip(ces, kls)), metrics


def member_mask(k: int):
  """`trains` mask of the parameters of cohort member k only."""
  name = f"member{k}"
  return lambda path: len(path) > 1 and path[0] == "student" and path[1] == name


@registry.register("dml", defaults=dict(temperature=1.0, kl_weight=1.0, peers="all",
                                        alternate=False))
def make(cfg: ml_collections.ConfigDict) -> base.Method:
  """DML with `cfg.dml.{temperature, kl_weight, peers, alternate}` (paper: 1, 1, 'all', ⚠)."""
  c = cfg.dml
  t, w, rule, alternate = float(c.temperature), float(c.kl_weight), str(c.peers), bool(c.alternate)
  peers(0, 2, rule)  # an unknown rule fails when the method is built, not mid-run

  def loss(params, state, student_out, teacher_out, batch, progress):
    del params, teacher_out, progress
    logits = [o[0] for o in member_outputs(student_out, "dml")]
    total, metrics = mutual_loss(logits, batch["label"], t, w, rule)
    return total, metrics, state

  if not alternate:
    return base.Method(name="dml", needs_teacher=False, loss=loss)

  def member_loss(k: int):
    """Peer k's own L_k: the loss of alternating pass k."""

    def fn(params, state, student_out, teacher_out, batch, progress):
      del params, teacher_out, progress
      logits = [o[0] for o in member_outputs(student_out, "dml")]
      if k >= len(logits):
        raise UserError(f"config.model has {len(logits)} members; dml.alternate was built for "
                        f"{cohort.size(cfg.model)}")
      ces, kls = mutual_terms(logits, batch["label"], t, rule)
      metrics = {f"loss_ce_member{k}": ces[k], f"loss_kl_member{k}": kls[k]}
      return ces[k] + w * kls[k], metrics, state

    return fn

  num = max(cohort.size(cfg.model), 2)
  extra = tuple(base.Update(loss=member_loss(k), trains=member_mask(k)) for k in range(1, num))
  return base.Method(name="dml", needs_teacher=False, loss=member_loss(0), trains=member_mask(0),
                     extra_updates=extra)
