"""A cohort: K member networks trained together (online distillation: DML, KDCL, AFD).

`kdjax.models.get('resnet32+wrn_16_2')` builds one. Each member is the zoo model of
its name, a submodule named `member<k>`, so `params['member0']` (and its
`batch_stats`) is exactly the tree `models.get('resnet32')` would have: a member
exports, converts and evaluates as a normal model.

`__call__(x, train)` returns `(ensemble_logits, {'members': [(logits_k, features_k)
for each k]})`. `x` is either one batch (B, H, W, C) that every member sees, or one
view per member (K, B, H, W, C) (KDCL's independently augmented views).

Ensemble: the log of the members' mean softmax, log((1/K) sum_k softmax(z_k)). Its
argmax is the class of the averaged probabilities, the ensemble accuracy of the
online-KD papers (ONE, AFD average the members' predictions); being normalised
log-probabilities it is also a valid logit vector for any loss or metric.
`ensemble='logits'` takes the plain mean of the logits instead.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.errors import UserError
from kdjax.models import registry

SEPARATOR = "+"


def split_name(name: str) -> list[str]:
  """'resnet32+wrn_16_2' -> ['resnet32', 'wrn_16_2'] (stripped of spaces)."""
  return [part.strip() for part in name.split(SEPARATOR)]


def name_of(networks: Sequence[str]) -> str:
  """Networks ('NET1', 'NET2'[, ...]) -> the cohort name 'NET1+NET2[+...]', checked."""
  parts = [p.strip() for p in networks if p.strip()]
  unknown = [p for p in parts if p not in registry.names()]
  if len(parts) < 2 or unknown:
    raise UserError(f"an online method trains two or more networks, 'NET1,NET2[,NET3...]', "
                    f"of valid models: {', '.join(registry.names())}; got {','.join(networks)!r}")
  return SEPARATOR.join(parts)


def name_from_arg(arg: str) -> str:
  """A text 'NET1,NET2[,NET3...]' (or 'NET1+NET2') -> the cohort name 'NET1+NET2[+NET3...]', checked."""
  return name_of(arg.replace(SEPARATOR, ",").split(","))


def size(name: str) -> int:
  """Number of members of the model `name` (1 for a plain model)."""
  return len(split_name(name))


def ensemble(member_logits: Sequence[jax.Array], rule: str = "probs") -> jax.Array:
  """log(mean_k softmax(z_k)) (`probs`) or mean_k z_k (`logits`), in float32 at least."""
  zs = jnp.stack([z.astype(jnp.promote_types(z.dtype, jnp.float32)) for z in member_logits])
  if rule == "logits":
    return jnp.mean(zs, axis=0)
  if rule == "probs":
    return jax.nn.logsumexp(jax.nn.log_softmax(zs, axis=-1), axis=0) - jnp.log(float(len(member_logits)))
  raise ValueError(f"unknown ensemble rule {rule!r}; expected 'probs' or 'logits'")


class Cohort(nn.Module):
  """K zoo models under `member0..member{K-1}`; returns the ensemble and every member's output."""
  members: tuple[str, ...]
  num_classes: int = 100
  dtype: Any = None
  ensemble: str = "probs"
  member_kwargs: tuple[tuple[str, Any], ...] = ()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    k = len(self.members)
    if x.ndim == 5 and x.shape[0] != k:
      raise ValueError(f"a {k}-member cohort takes one view per member; got {x.shape[0]} views")
    outs = []
    for i, arch in enumerate(self.members):
      net = registry.factory(arch)(num_classes=self.num_classes, dtype=self.dtype, name=f"member{i}",
                    **dict(self.member_kwargs))
      outs.append(net(x[i] if x.ndim == 5 else x, train=train))
    return ensemble([o[0] for o in outs], self.ensemble), {"members": outs}
