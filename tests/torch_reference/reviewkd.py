"""PyTorch reference of ReviewKD's ABF, review loop and HCL (NCHW), written from the equations.

Test-only. Levels are ordered shallow -> deep; the fusion runs deep -> shallow.
`load_flax_variables` copies kdjax's ABF parameters and BN statistics in, so both
sides start from the same weights.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ABF(nn.Module):
  """x -> BN(conv1x1) [-> gated sum with the resized residual] [-> resize to the teacher] -> BN(conv3x3)."""

  def __init__(self, in_channels, mid_channels, out_channels, fuse):
    super().__init__()
    self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False),
                               nn.BatchNorm2d(mid_channels))
    self.att_conv = nn.Conv2d(2 * mid_channels, 2, 1) if fuse else None
    self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                               nn.BatchNorm2d(out_channels))

  def forward(self, x, residual, out_size):
    x = self.conv1(x)
    if self.att_conv is not None:
      residual = F.interpolate(residual, size=tuple(x.shape[-2:]), mode="nearest")
      gates = torch.sigmoid(self.att_conv(torch.cat([x, residual], dim=1)))
      x = x * gates[:, 0:1] + residual * gates[:, 1:2]
    if tuple(x.shape[-2:]) != tuple(out_size):
      x = F.interpolate(x, size=tuple(out_size), mode="nearest")
    return self.conv2(x), x


class ReviewHead(nn.Module):
  """ABFs indexed deepest first (`abfs[0]` has no fusion); forward returns outputs shallow -> deep."""

  def __init__(self, in_channels, out_channels, out_sizes, mid_channels):
    super().__init__()
    n = len(in_channels)
    self.out_sizes = list(out_sizes)
    self.abfs = nn.ModuleList(
        [ABF(in_channels[n - 1 - k], mid_channels, out_channels[n - 1 - k], fuse=k > 0) for k in range(n)])

  def forward(self, levels):
    n = len(levels)
    outputs = [None] * n
    residual = None
    for k in range(n):
      i = n - 1 - k
      outputs[i], residual = self.abfs[k](levels[i], residual, self.out_sizes[i])
    return outputs


def hcl(outputs, teacher):
  """Sum over levels of (MSE + halving weights x MSE of 4/2/1 adaptive pools smaller than the map) / sum of weights."""
  total = 0.0
  for y, t in zip(outputs, teacher):
    h = y.shape[2]
    level, norm, w = F.mse_loss(y, t), 1.0, 1.0
    for size in (4, 2, 1):
      if size < h:
        w = w / 2.0
        level = level + w * F.mse_loss(F.adaptive_avg_pool2d(y, size), F.adaptive_avg_pool2d(t, size))
        norm += w
    total = total + level / norm
  return total


def to_nchw(x):
  """NHWC numpy array -> NCHW torch tensor (a copy)."""
  return torch.tensor(np.ascontiguousarray(np.transpose(np.asarray(x), (0, 3, 1, 2))))


def _copy_conv(conv, p):
  conv.weight.data = torch.tensor(np.transpose(np.asarray(p["kernel"]), (3, 2, 0, 1)).copy())
  if "bias" in p:
    conv.bias.data = torch.tensor(np.asarray(p["bias"]).copy())


def _copy_bn(bn, p, s):
  bn.weight.data = torch.tensor(np.asarray(p["scale"]).copy())
  bn.bias.data = torch.tensor(np.asarray(p["bias"]).copy())
  bn.running_mean.data = torch.tensor(np.asarray(s["mean"]).copy())
  bn.running_var.data = torch.tensor(np.asarray(s["var"]).copy())


def load_flax_variables(head, params, batch_stats):
  """Copies kdjax `ReviewHead` params (HWIO kernels -> OIHW) and BN statistics into `head`."""
  for k, abf in enumerate(head.abfs):
    p, s = params[f"abfs_{k}"], batch_stats[f"abfs_{k}"]
    for name in ("conv1", "conv2"):
      _copy_conv(getattr(abf, name)[0], p[name]["0"])
      _copy_bn(getattr(abf, name)[1], p[name]["1"], s[name]["1"])
    if abf.att_conv is not None:
      _copy_conv(abf.att_conv, p["att_conv"])


def grads_as_flax(head):
  """The head's parameter gradients in kdjax's tree layout (OIHW -> HWIO)."""
  out = {}
  for k, abf in enumerate(head.abfs):
    g = {}
    for name in ("conv1", "conv2"):
      conv, bn = getattr(abf, name)
      g[name] = {"0": {"kernel": conv.weight.grad.numpy().transpose(2, 3, 1, 0)},
                 "1": {"scale": bn.weight.grad.numpy(), "bias": bn.bias.grad.numpy()}}
    if abf.att_conv is not None:
      g["att_conv"] = {"kernel": abf.att_conv.weight.grad.numpy().transpose(2, 3, 1, 0),
                       "bias": abf.att_conv.bias.grad.numpy()}
    out[f"abfs_{k}"] = g
  return out


def running_stats_as_flax(head):
  """The head's BN running statistics in kdjax's tree layout."""
  out = {}
  for k, abf in enumerate(head.abfs):
    out[f"abfs_{k}"] = {name: {"1": {"mean": getattr(abf, name)[1].running_mean.numpy(),
                                     "var": getattr(abf, name)[1].running_var.numpy()}}
                        for name in ("conv1", "conv2")}
  return out
