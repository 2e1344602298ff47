"""PyTorch references (NCHW) for CRD, KDSVD and OFD, written from their equations (docs/methods.md §7.8/9/12).

Test-only. They follow the formulation of the reference implementations (RepDistiller's
CRD memory and NCE criterion, the mdistiller/RepDistiller KDSVD port, mdistiller's OFD)
step by step, with the inputs the reference's randomness would produce (memory banks,
sampled contrast indices) passed in explicitly so both sides see the same ones.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import norm

# ------------------------------------------------------------------------------- CRD

CRD_EPS = 1e-7


class Embed(nn.Module):
  """Linear, then division by the row's L2 norm."""

  def __init__(self, dim_in, dim_out=128):
    super().__init__()
    self.linear = nn.Linear(dim_in, dim_out)

  def forward(self, x):
    x = self.linear(x.reshape(x.shape[0], -1))
    return x / x.pow(2).sum(1, keepdim=True).pow(0.5)


def contrast_memory(v_s, v_t, memory_s, memory_t, index, contrast_idx, z_s, z_t, temperature,
                    momentum):
  """Scores of both anchors against the other side's bank, Z set if negative, then the bank update.

  Returns (out_s, out_t, new memory_s, new memory_t, z_s, z_t); the banks passed in are not modified.
  """
  b, k1 = contrast_idx.shape
  n, d = memory_s.shape
  flat = contrast_idx.reshape(-1)
  w_t = torch.index_select(memory_t, 0, flat).detach().view(b, k1, d)
  out_s = torch.exp(torch.bmm(w_t, v_s.view(b, d, 1)) / temperature)
  w_s = torch.index_select(memory_s, 0, flat).detach().view(b, k1, d)
  out_t = torch.exp(torch.bmm(w_s, v_t.view(b, d, 1)) / temperature)
  if z_s < 0:
    z_s = (out_s.mean() * n).item()
  if z_t < 0:
    z_t = (out_t.mean() * n).item()
  out_s, out_t = out_s / z_s, out_t / z_t
  memory_s, memory_t = memory_s.clone(), memory_t.clone()
  with torch.no_grad():
    for memory, v in ((memory_s, v_s), (memory_t, v_t)):
      rows = torch.index_select(memory, 0, index) * momentum + v * (1 - momentum)
      memory.index_copy_(0, index, rows / rows.pow(2).sum(1, keepdim=True).pow(0.5))
  return out_s, out_t, memory_s, memory_t, z_s, z_t


def nce(x, n_data):
  """The NCE criterion of (B, K+1, 1) normalised scores, column 0 the positive."""
  bsz, m = x.shape[0], x.size(1) - 1
  pn = 1 / float(n_data)
  p_pos = x.select(1, 0)
  log_d1 = torch.div(p_pos, p_pos + m * pn + CRD_EPS).log()
  p_neg = x.narrow(1, 1, m)
  log_d0 = torch.div(torch.full_like(p_neg, m * pn), p_neg + m * pn + CRD_EPS).log()
  return -(log_d1.sum(0) + log_d0.view(-1, 1).sum(0)) / bsz


def crd(f_s, f_t, embed_s, embed_t, memory_s, memory_t, index, contrast_idx, z_s, z_t,
        temperature=0.07, momentum=0.5):
  """(CRD term, new memory_s, new memory_t, z_s, z_t)."""
  v_s, v_t = embed_s(f_s), embed_t(f_t)
  out_s, out_t, mem_s, mem_t, z_s, z_t = contrast_memory(
      v_s, v_t, memory_s, memory_t, index, contrast_idx, z_s, z_t, temperature, momentum)
  n = memory_s.shape[0]
  return (nce(out_s, n) + nce(out_t, n)).squeeze(), mem_s, mem_t, z_s, z_t


# ------------------------------------------------------------------------------ KDSVD


def _removenan(x):
  return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _canonical_sign(v):
  """Flip each column of (B, n, k) so that its largest-magnitude entry is positive (kdjax's convention)."""
  top = torch.gather(v, 1, v.abs().argmax(1, keepdim=True))
  return v * torch.where(top < 0, -1.0, 1.0).to(v.dtype)


def _svd(feat, n):
  b, c, h, w = feat.shape
  x = feat.view(b, c * h, w)
  u, s, vh = torch.linalg.svd(x, full_matrices=False)
  v = _removenan(vh.transpose(-2, -1))
  s = _removenan(s)
  return F.normalize(_canonical_sign(v[:, :, :n]), dim=1), F.normalize(s[:, :n], dim=1)


def _align(a, b):
  cosine = torch.matmul(a.transpose(-2, -1), b)
  max_abs, _ = torch.max(torch.abs(cosine), 1, keepdim=True)
  mask = torch.where(torch.eq(max_abs, torch.abs(cosine)), torch.sign(cosine),
                     torch.zeros_like(cosine))
  return torch.matmul(a, mask)


def kdsvd(g_s, g_t, k=1):
  """Sum over consecutive stages of sum (rbf_S - rbf_T)^2 / B, non-finite entries dropped."""
  v_sb = v_tb = None
  losses = []
  for i, (f_s, f_t) in enumerate(zip(g_s, g_t)):
    v_t, s_t = _svd(f_t, k)
    v_s, _ = _svd(f_s, k + 3)
    v_s = _align(v_s, v_t)
    s_t = s_t.unsqueeze(1)
    v_t, v_s = v_t * s_t, v_s * s_t
    if i > 0:
      s_rbf = torch.exp(-(v_s.unsqueeze(2) - v_sb.unsqueeze(1)).pow(2) / 8)
      t_rbf = torch.exp(-(v_t.unsqueeze(2) - v_tb.unsqueeze(1)).pow(2) / 8)
      l2 = (s_rbf - t_rbf.detach()).pow(2)
      losses.append(torch.where(torch.isfinite(l2), l2, torch.zeros_like(l2)).sum())
    v_tb, v_sb = v_t, v_s
  return sum(losses) / g_s[0].shape[0]


# -------------------------------------------------------------------------------- OFD


def ofd_margin(scale, bias):
  """Per-channel margins with Python floats and scipy, as mdistiller computes them (float32 result)."""
  out = []
  for s, m in zip(np.asarray(scale, np.float64), np.asarray(bias, np.float64)):
    s = abs(float(s))
    m = float(m)
    if norm.cdf(-m / s) > 0.001:
      out.append(-s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / norm.cdf(-m / s) + m)
    else:
      out.append(-3 * s)
  return np.asarray(out)


class Connector(nn.Sequential):
  """Conv2d k x k without bias, then BatchNorm2d."""

  def __init__(self, s_channels, t_channels, kernel_size=1):
    super().__init__(nn.Conv2d(s_channels, t_channels, kernel_size, padding=(kernel_size - 1) // 2,
                               bias=False),
                     nn.BatchNorm2d(t_channels))


def ofd_feat_loss(source, target, margin):
  loss = ((source - margin) ** 2 * ((source > margin) & (target <= margin)).to(source.dtype)
          + (source - target) ** 2 * ((source > target) & (target > margin) & (target <= 0)).to(source.dtype)
          + (source - target) ** 2 * (target > 0).to(source.dtype))
  return torch.abs(loss).mean(dim=0).sum()


def ofd(g_s, g_t, connectors, margins):
  """Stages aligned at the end; teacher pooled to the student's size; weights 1 / 2^(n-i-1)."""
  n = min(len(g_s), len(g_t))
  g_s, g_t = list(g_s)[len(g_s) - n:], list(g_t)[len(g_t) - n:]
  total = 0.0
  for i in range(n):
    x = connectors[i](g_s[i])
    t = F.adaptive_avg_pool2d(g_t[i], x.shape[-2:]).detach()
    m = margins[i].to(x.dtype).view(1, -1, 1, 1)
    total = total + ofd_feat_loss(x, t, m) / 2 ** (n - i - 1)
  return total
