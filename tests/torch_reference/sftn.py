"""PyTorch reference of SFTN's phase-1 pieces (test-only): the loss, the transform T_i, a branch.

Written from docs/methods.md §4 and kdjax/methods/sftn.py's documented choices, independently of the
JAX code: NCHW tensors, `torch.nn` layers, autograd for the gradients. A branch is T_i followed by
the remaining stages of the reference CIFAR ResNet (`models.CifarResNet`) and its `fc`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tests.torch_reference import models


def branch_kl(branch_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
              direction: str = "kd") -> torch.Tensor:
  """tau^2 * batchmean KL; 'kd': KL(p_T || p_R) as `F.kl_div(log p_R, p_T)`, 'reverse': KL(p_R || p_T)."""
  log_pr = F.log_softmax(branch_logits / temperature, dim=1)
  log_pt = F.log_softmax(teacher_logits / temperature, dim=1)
  if direction == "kd":
    kl = F.kl_div(log_pr, log_pt, reduction="batchmean", log_target=True)
  else:
    kl = F.kl_div(log_pt, log_pr, reduction="batchmean", log_target=True)
  return kl * temperature**2


def sftn_loss(teacher_logits: torch.Tensor, branch_logits: Sequence[torch.Tensor], labels: torch.Tensor,
              teacher_ce_weight: float = 1.0, branch_ce_weight: float = 1.0, branch_kl_weight: float = 3.0,
              temperature: float = 1.0, kl_direction: str = "kd", branch_reduction: str = "sum"
              ) -> torch.Tensor:
  """l_T CE(teacher) + l_CE red_i CE(branch_i) + l_KL red_i KL_i; nothing detached."""
  ce_r = sum(F.cross_entropy(z, labels) for z in branch_logits)
  kl_r = sum(branch_kl(z, teacher_logits, temperature, kl_direction) for z in branch_logits)
  if branch_reduction == "mean":
    ce_r, kl_r = ce_r / len(branch_logits), kl_r / len(branch_logits)
  return (teacher_ce_weight * F.cross_entropy(teacher_logits, labels) + branch_ce_weight * ce_r
          + branch_kl_weight * kl_r)


class Transform(nn.Sequential):
  """Resample to `out_size` (adaptive avg pool / stride / nearest), then children conv (0), BN (1), ReLU."""

  def __init__(self, cin: int, cout: int, in_size: int, out_size: int, kernel: int = 1, relu: bool = True,
               downsample: str = "avg_pool"):
    stride = in_size // out_size if in_size > out_size and downsample == "stride" else 1
    super().__init__(nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
                     nn.BatchNorm2d(cout))
    self.out_size, self.relu = out_size, relu
    self.pool = in_size > out_size and downsample != "stride"
    self.upsample = in_size < out_size

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.pool:
      x = F.adaptive_avg_pool2d(x, self.out_size)
    elif self.upsample:
      x = F.interpolate(x, size=(self.out_size, self.out_size), mode="nearest")
    x = super().forward(x)
    return F.relu(x) if self.relu else x


def resnet_from_stage(net: models.CifarResNet, h: torch.Tensor, stage: int) -> torch.Tensor:
  """Logits of the reference CIFAR ResNet run from `h` = its stage-`stage` output (0: the stem)."""
  x = h
  for stage_module in (net.layer1, net.layer2, net.layer3)[stage:]:
    for block in stage_module:
      x, _ = block(x)
  return net.fc(F.avg_pool2d(x, x.shape[-1]).flatten(1))


class ResNetBranch(nn.Module):
  """R_i: `transform` then the student ResNet (held as `student`) from stage `stage` on."""

  def __init__(self, transform: Transform, student: models.CifarResNet, stage: int):
    super().__init__()
    self.transform, self.student, self.stage = transform, student, stage

  def forward(self, h: torch.Tensor) -> torch.Tensor:
    return resnet_from_stage(self.student, self.transform(h), self.stage)
