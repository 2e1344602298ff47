"""PyTorch references (NCHW) for the feature baselines, written from the equations (docs/methods.md §7).

Test-only. They follow the formulation of the reference implementations (RepDistiller /
mdistiller): F.normalize, adaptive average pooling of the larger map, the expanded
pairwise-distance form for RKD, and (norm + eps) with NaNs zeroed for PKT, so kdjax's
versions are checked against the numbers the PyTorch code produces.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def _same_size(f_s, f_t):
  """Pool the taller map down to the other's (H, W)."""
  if f_s.shape[2] > f_t.shape[2]:
    f_s = F.adaptive_avg_pool2d(f_s, f_t.shape[2:])
  elif f_s.shape[2] < f_t.shape[2]:
    f_t = F.adaptive_avg_pool2d(f_t, f_s.shape[2:])
  return f_s, f_t


class ConvReg(nn.Module):
  """FitNets' regressor from NCHW shapes (C, H, W): conv by the size ratio, BN, ReLU."""

  def __init__(self, s_shape, t_shape):
    super().__init__()
    (s_c, s_h, s_w), (t_c, t_h, t_w) = s_shape, t_shape
    if s_h == 2 * t_h:
      self.conv = nn.Conv2d(s_c, t_c, 3, stride=2, padding=1)
    elif 2 * s_h == t_h:
      self.conv = nn.ConvTranspose2d(s_c, t_c, 4, stride=2, padding=1)
    else:
      self.conv = nn.Conv2d(s_c, t_c, (1 + s_h - t_h, 1 + s_w - t_w))
    self.bn = nn.BatchNorm2d(t_c)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def fitnet(f_s, f_t, reg):
  return F.mse_loss(reg(f_s), f_t)


def at(g_s, g_t, p=2):
  total = 0.0
  for f_s, f_t in zip(g_s, g_t):
    f_s, f_t = _same_size(f_s, f_t)
    a_s = F.normalize(f_s.pow(p).mean(1).flatten(1), dim=1)
    a_t = F.normalize(f_t.pow(p).mean(1).flatten(1), dim=1)
    total = total + (a_s - a_t).pow(2).mean()
  return total


def _poly_mmd_term(a, b):
  """mean over (B, C_a, C_b) of (a_c . b_d)^2 for (B, C, P) channel vectors."""
  return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def nst(g_s, g_t):
  total = 0.0
  for f_s, f_t in zip(g_s, g_t):
    f_s, f_t = _same_size(f_s, f_t)
    s = F.normalize(f_s.flatten(2), dim=2)
    t = F.normalize(f_t.flatten(2), dim=2)
    total = total + _poly_mmd_term(t, t).detach() + _poly_mmd_term(s, s) - 2 * _poly_mmd_term(s, t)
  return total


def _pkt_distribution(f, eps):
  f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + eps)
  f = torch.where(torch.isnan(f), torch.zeros_like(f), f)
  k = (f @ f.t() + 1.0) / 2.0
  return k / k.sum(1, keepdim=True)


def pkt(f_s, f_t, eps=1e-7):
  p_s, p_t = _pkt_distribution(f_s, eps), _pkt_distribution(f_t, eps)
  return torch.mean(p_t * torch.log((p_t + eps) / (p_s + eps)))


def sp(f_s, f_t):
  b = f_s.shape[0]
  g_s = F.normalize(f_s.flatten(1) @ f_s.flatten(1).t(), dim=1)
  g_t = F.normalize(f_t.flatten(1) @ f_t.flatten(1).t(), dim=1)
  return (g_t - g_s).pow(2).sum() / (b * b)


def _rkd_dist(e, eps):
  sq = e.pow(2).sum(1)
  d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=eps).sqrt()
  d = d * (1 - torch.eye(len(e), dtype=d.dtype))  # zero diagonal, no gradient through it
  return d / d[d > 0].mean()


def _rkd_angle(e):
  n = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)
  return torch.bmm(n, n.transpose(1, 2)).flatten()


def rkd(f_s, f_t, w_d=25.0, w_a=50.0, eps=1e-12):
  with torch.no_grad():
    t_d, t_a = _rkd_dist(f_t, eps), _rkd_angle(f_t)
  loss_d = F.smooth_l1_loss(_rkd_dist(f_s, eps), t_d)
  loss_a = F.smooth_l1_loss(_rkd_angle(f_s), t_a)
  return w_d * loss_d + w_a * loss_a


class VIDStage(nn.Module):
  """Mean regressor (three bias-free 1x1 convs) and per-channel variance softplus(alpha) + eps."""

  def __init__(self, s_c, t_c, init_pred_var=5.0, eps=1e-5):
    super().__init__()
    self.regressor = nn.Sequential(nn.Conv2d(s_c, t_c, 1, bias=False), nn.ReLU(),
                                   nn.Conv2d(t_c, t_c, 1, bias=False), nn.ReLU(),
                                   nn.Conv2d(t_c, t_c, 1, bias=False))
    self.alpha = nn.Parameter(torch.full((t_c,), float(np.log(np.expm1(init_pred_var - eps)))))
    self.eps = eps

  def forward(self, f_s, f_t):
    f_s, f_t = _same_size(f_s, f_t)
    mu = self.regressor(f_s)
    var = (torch.log(1.0 + torch.exp(self.alpha)) + self.eps).view(1, -1, 1, 1)
    return torch.mean(0.5 * ((mu - f_t).pow(2) / var + torch.log(var)))


def vid(g_s, g_t, stages):
  return sum(stage(f_s, f_t) for f_s, f_t, stage in zip(g_s, g_t, stages))


def cc(f_s, f_t, embed_s, embed_t):
  delta = (embed_s(f_s) - embed_t(f_t)).abs()
  return (delta[:-1] * delta[1:]).sum(1).mean()
