"""PyTorch reference losses, written from the papers' equations and mdistiller's conventions.

Test-only: these mirror the reference implementations' formulation (probabilities,
a -1000 target mask for NCKD) so kdjax's log-space versions are checked against
the numbers the PyTorch code produces on ordinary logits.
"""
import torch
import torch.nn.functional as F


def kd(student_logits, teacher_logits, temperature):
  """T^2 * batch-mean of sum_c KL(softmax(t/T) || softmax(s/T))."""
  log_ps = F.log_softmax(student_logits / temperature, dim=1)
  pt = F.softmax(teacher_logits / temperature, dim=1)
  return F.kl_div(log_ps, pt, reduction="none").sum(1).mean() * temperature**2


def standardize(logits):
  """Logit standardization's z-score, as its release writes it: torch's (unbiased) std, + 1e-7."""
  return (logits - logits.mean(dim=-1, keepdim=True)) / (1e-7 + logits.std(dim=-1, keepdim=True))


def _masks(logits, target):
  gt = torch.zeros_like(logits).scatter_(1, target.unsqueeze(1), 1.0).bool()
  return gt, ~gt


def _cat_mask(p, gt, other):
  return torch.cat([(p * gt).sum(1, keepdim=True), (p * other).sum(1, keepdim=True)], dim=1)


def dkd(student_logits, teacher_logits, target, alpha, beta, temperature):
  """mdistiller's DKD term (without warmup and CE), as written there: TCKD, NCKD with -1000 masking."""
  gt, other = _masks(student_logits, target)
  ps = F.softmax(student_logits / temperature, dim=1)
  pt = F.softmax(teacher_logits / temperature, dim=1)
  bs, bt = _cat_mask(ps, gt, other), _cat_mask(pt, gt, other)
  tckd = F.kl_div(torch.log(bs), bt, reduction="sum") * temperature**2 / target.shape[0]
  pt2 = F.softmax(teacher_logits / temperature - 1000.0 * gt, dim=1)
  log_ps2 = F.log_softmax(student_logits / temperature - 1000.0 * gt, dim=1)
  nckd = F.kl_div(log_ps2, pt2, reduction="sum") * temperature**2 / target.shape[0]
  return alpha * tckd + beta * nckd


def cross_entropy(logits, target):
  return F.cross_entropy(logits, target)
