"""PyTorch reference for FKD (docs/methods.md §5), written from the equations for the tests.

Test-only. Rows are normalised with `F.normalize` (as the third-party code divides by the
norm), the kernels are cosine matrices, the teacher kernel is computed under no_grad and an
ensemble's kernel is the members' mean; the squared differences are summed over the
off-diagonal pairs and divided by B (B - 1). FR is the batch mean of the student features'
squared L2 norm, or of the norm itself (`squared=False`, the third-party code's form).
"""
import torch
import torch.nn.functional as F


def correlation_kernel(h):
  n = F.normalize(h, p=2, dim=1)
  return n @ n.t()


def fkd_loss(logits_s, h_s, teacher_feats, labels, ce_weight, fk_weight, fr_weight, squared):
  """(total, ce, kernel term, fr) for student logits/features and a list of teacher features."""
  b = h_s.shape[0]
  with torch.no_grad():
    ker_t = sum(correlation_kernel(h) for h in teacher_feats) / len(teacher_feats)
  ker_s = correlation_kernel(h_s)
  off = 1 - torch.eye(b, dtype=h_s.dtype)
  fk = ((ker_s - ker_t).pow(2) * off).sum() / (b * (b - 1))
  fr = h_s.pow(2).sum(1).mean() if squared else h_s.norm(dim=1).mean()
  labelled = labels >= 0
  ce = F.cross_entropy(logits_s[labelled], labels[labelled]) if labelled.any() else logits_s.sum() * 0
  return ce_weight * ce + fk_weight * fk + fr_weight * fr, ce, fk, fr
