"""PyTorch references (NCHW) for the pre-stage methods AB, FT, FSP (docs/methods.md §7.10, 7.11, 7.14).

Test-only, written from the equations in the formulation of RepDistiller's code: AB's summed
boundary L2 with stage weights 2^(i-n+1), / B, x 3/1000; FT's paraphraser / translator
(LeakyReLU 0.1, transposed 3x3 decoder) and its normalised channel-mean-of-squares factor with
the mean absolute difference; FSP's per-sample C_top x C_bottom flow matrices.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _pool_larger(a, b):
  """Pool the taller NCHW map down to the other's (H, W)."""
  if a.shape[2] > b.shape[2]:
    a = F.adaptive_avg_pool2d(a, b.shape[2:])
  elif a.shape[2] < b.shape[2]:
    b = F.adaptive_avg_pool2d(b, a.shape[2:])
  return a, b


# ------------------------------------------------------------------------------------ AB


class ABConnector(nn.Module):
  """Conv by the height ratio (NCHW shapes (C, H, W)), then BN; no ReLU."""

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
    return self.bn(self.conv(x))


def ab_stage(s, t, margin):
  below = ((s > -margin) & (t <= 0)).to(s.dtype)
  above = ((s <= margin) & (t > 0)).to(s.dtype)
  return ((s + margin).pow(2) * below + (s - margin).pow(2) * above).sum()


def ab(g_s, g_t, connectors, margin=1.0):
  """`connectors[i]` is None where the stage has no connector (identity)."""
  n, batch = len(g_s), g_s[0].shape[0]
  total = 0.0
  for i, (s, t, conn) in enumerate(zip(g_s, g_t, connectors)):
    if conn is not None:
      s = conn(s)
    total = total + 2.0 ** (i - n + 1) * ab_stage(s, t, margin) / batch * 3 / 1000
  return total


# ------------------------------------------------------------------------------------ FT


class Paraphraser(nn.Module):
  def __init__(self, c, rate=0.5):
    super().__init__()
    f = int(c * rate)
    act = lambda: nn.LeakyReLU(0.1)
    self.encoder = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), act(), nn.Conv2d(c, f, 3, 1, 1), act(),
                                 nn.Conv2d(f, f, 3, 1, 1), act())
    self.decoder = nn.Sequential(nn.ConvTranspose2d(f, f, 3, 1, 1), act(),
                                 nn.ConvTranspose2d(f, c, 3, 1, 1), act(),
                                 nn.ConvTranspose2d(c, c, 3, 1, 1), act())

  def forward(self, x):
    factor = self.encoder(x)
    return factor, self.decoder(factor)


class Translator(nn.Module):
  def __init__(self, s_c, t_c, rate=0.5):
    super().__init__()
    f = int(t_c * rate)
    act = lambda: nn.LeakyReLU(0.1)
    self.encoder = nn.Sequential(nn.Conv2d(s_c, s_c, 3, 1, 1), nn.BatchNorm2d(s_c), act(),
                                 nn.Conv2d(s_c, f, 3, 1, 1), nn.BatchNorm2d(f), act(),
                                 nn.Conv2d(f, f, 3, 1, 1), nn.BatchNorm2d(f), act())

  def forward(self, x):
    return self.encoder(x)


def ft_reconstruction(f_t, paraphraser):
  return F.mse_loss(paraphraser(f_t)[1], f_t)


def _factor(x):
  return F.normalize(x.pow(2).mean(1).view(x.shape[0], -1))


def ft(f_s, f_t, translator, paraphraser):
  with torch.no_grad():
    factor_t = paraphraser.encoder(f_t)
  factor_s, factor_t = _pool_larger(translator(f_s), factor_t)
  return (_factor(factor_s) - _factor(factor_t)).abs().mean()


# ----------------------------------------------------------------------------------- FSP


def _fsp_matrices(g):
  out = []
  for bottom, top in zip(g[:-1], g[1:]):
    bottom, top = _pool_larger(bottom, top)
    b = bottom.flatten(2)                            # (B, C_bottom, HW)
    t = top.flatten(2)                               # (B, C_top, HW)
    out.append((t[:, :, None, :] * b[:, None, :, :]).mean(-1))  # (B, C_top, C_bottom)
  return out


def fsp(g_s, g_t):
  return sum((s - t).pow(2).mean() for s, t in zip(_fsp_matrices(g_s), _fsp_matrices(g_t)))
