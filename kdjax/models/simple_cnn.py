"""The tiny CNNs of a third-party DKD study on CIFAR-10 (docs/sources.md [S4]): a 5-layer teacher
and a 4-layer student, far smaller than anything in the DKD paper.

The study gives the layer sequence but not the widths or kernel sizes; those are
fields here (defaults: 3x3 convs with padding 1, teacher widths 32/64 and hidden
256/128, student widths 16/32 and hidden 128). It lists no nonlinearity after
the convolutions, so none is applied (max-pooling is the only nonlinearity there).

* teacher: conv -> maxpool -> BN -> conv -> maxpool -> BN -> flatten -> dropout(0.15)
  -> fc+ReLU -> fc+ReLU -> fc
* student: conv -> maxpool -> conv -> maxpool -> flatten -> fc+ReLU -> fc

Features: `feats` are the two pooled conv stages (after BN for the teacher),
`pooled` the penultimate vector that feeds the classifier. Dropout needs a
'dropout' PRNG stream in train mode (the trainer passes one).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax

from kdjax.models import layers
from kdjax.models.registry import register


class SimpleCNNTeacher(nn.Module):
  """conv-pool-BN x2, dropout, three fully connected layers."""
  num_classes: int = 10
  widths: Sequence[int] = (32, 64)
  hidden: Sequence[int] = (256, 128)
  dropout: float = 0.15
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    feats = []
    cin = x.shape[-1]
    for i, w in enumerate(self.widths):
      x = layers.conv(w, 3, use_bias=True, in_features=cin, name=f"conv{i + 1}", dtype=self.dtype)(x)
      x = layers.max_pool_2x2(x)
      x = layers.batch_norm(train, name=f"bn{i + 1}", dtype=self.dtype)(x)
      feats.append(x)
      cin = w
    h = x.reshape(x.shape[0], -1)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    for i, w in enumerate(self.hidden):
      h = nn.relu(layers.dense(w, h.shape[-1], name=f"fc{i + 1}", dtype=self.dtype)(h))
    logits = layers.dense(self.num_classes, h.shape[-1], name=f"fc{len(self.hidden) + 1}",
                          dtype=self.dtype)(h)
    return logits, {"feats": tuple(feats), "preact_feats": tuple(feats), "pooled": h}


class SimpleCNNStudent(nn.Module):
  """conv-pool x2, two fully connected layers."""
  num_classes: int = 10
  widths: Sequence[int] = (16, 32)
  hidden: int = 128
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    del train  # no BN or dropout
    feats = []
    cin = x.shape[-1]
    for i, w in enumerate(self.widths):
      x = layers.conv(w, 3, use_bias=True, in_features=cin, name=f"conv{i + 1}", dtype=self.dtype)(x)
      x = layers.max_pool_2x2(x)
      feats.append(x)
      cin = w
    h = nn.relu(layers.dense(self.hidden, x.shape[1] * x.shape[2] * x.shape[3], name="fc1",
                             dtype=self.dtype)(x.reshape(x.shape[0], -1)))
    logits = layers.dense(self.num_classes, self.hidden, name="fc2", dtype=self.dtype)(h)
    return logits, {"feats": tuple(feats), "preact_feats": tuple(feats), "pooled": h}


@register("simple_cnn_teacher")
def simple_cnn_teacher(num_classes: int = 10, **kwargs) -> nn.Module:
  """The study's 5-layer teacher."""
  return SimpleCNNTeacher(num_classes=num_classes, **kwargs)


@register("simple_cnn_student")
def simple_cnn_student(num_classes: int = 10, **kwargs) -> nn.Module:
  """The study's 4-layer student."""
  return SimpleCNNStudent(num_classes=num_classes, **kwargs)
