"""PyTorch references (NCHW) for the online methods DML, KDCL and AFD, written from the equations.

Test-only, written from docs/methods.md §6 / §7.15 / §7.16 and the kdjax docstrings (no public
code exists for AFD or KDCL): the peers' logits are detached targets, KL is
`F.kl_div(..., reduction='batchmean') * T^2`, the GAN terms are least-squares, the
discriminator is a `nn.Sequential` of PyTorch layers in train mode (BatchNorm on
batch statistics), and the generator term sees the discriminator's parameters detached.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def soft_kl(z_student, z_target, temperature):
  """T^2 * batchmean KL(softmax(z_target / T) || softmax(z_student / T)), target detached."""
  log_p = F.log_softmax(z_student / temperature, dim=1)
  log_q = F.log_softmax(z_target.detach() / temperature, dim=1)
  return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * temperature ** 2


def ce(z, labels):
  """Mean cross-entropy over the labelled examples (label -1 ignored)."""
  return F.cross_entropy(z, labels, ignore_index=-1)


def peers(k, num, rule):
  return [(k - 1) % num] if rule == "cyclic" else [l for l in range(num) if l != k]


def mutual_loss(logits, labels, temperature, kl_weight, rule):
  """DML / AFD logit loss: sum_k CE_k + w * mean over peers of T^2 KL(p_l || p_k)."""
  total = 0.0
  for k, z in enumerate(logits):
    group = peers(k, len(logits), rule)
    kl = sum(soft_kl(z, logits[l], temperature) for l in group) / len(group)
    total = total + ce(z, labels) + kl_weight * kl
  return total


# ----------------------------------------------------------------------------- KDCL


def kdcl_target(logits, labels, rule, linear_steps=10, linear_lr=0.1):
  """The fused soft target (B, C) of each KDCL rule; unlabelled rows get the mean logits."""
  zs = torch.stack([z.detach() for z in logits])  # (K, B, C)
  labelled = labels >= 0
  y = labels.clamp(min=0)
  mean = zs.mean(0)
  if rule == "mean":
    return mean
  if rule == "naive":
    nll = torch.stack([F.cross_entropy(z, y, reduction="none") for z in zs])  # (K, B)
    best = nll.argmin(0)
    fused = zs[best, torch.arange(zs.shape[1])]
  elif rule == "min_logit":
    shifted = zs - zs.gather(2, y[None, :, None].expand(zs.shape[0], -1, 1))
    fused = shifted.min(0).values
  elif rule == "linear":
    a = torch.full((zs.shape[0],), 1.0 / zs.shape[0], dtype=zs.dtype)
    n = max(int(labelled.sum()), 1)
    onehot = F.one_hot(y, zs.shape[2]).to(zs.dtype) * labelled[:, None]
    for _ in range(linear_steps):
      p = torch.softmax(torch.einsum("k,kbc->bc", a, zs), dim=1) * labelled[:, None]
      grad = torch.einsum("bc,kbc->k", p - onehot, zs) / n
      a = a * torch.exp(-linear_lr * grad)
      a = a / a.sum()
    fused = torch.einsum("k,kbc->bc", a, zs)
  else:
    raise ValueError(rule)
  return torch.where(labelled[:, None], fused, mean)


def kdcl_loss(logits, labels, temperature, kl_weight, rule, linear_steps=10, linear_lr=0.1):
  """sum_k CE_k + w * T^2 KL(p_target || p_k)."""
  target = kdcl_target(logits, labels, rule, linear_steps, linear_lr)
  return sum(ce(z, labels) + kl_weight * soft_kl(z, target, temperature) for z in logits)


# ------------------------------------------------------------------------------ AFD


class Discriminator(nn.Module):
  """conv3x3 (no bias) - BN (train mode) - LeakyReLU - conv over the whole map - sigmoid."""

  def __init__(self, channels, hidden, size, slope=0.2, sigmoid=True):
    super().__init__()
    self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(hidden)
    self.conv2 = nn.Conv2d(hidden, 1, size)
    self.slope, self.sigmoid = slope, sigmoid

  def forward(self, f):
    x = F.leaky_relu(self.bn1(self.conv1(f)), self.slope)
    x = self.conv2(x).flatten()
    return torch.sigmoid(x) if self.sigmoid else x


class Transfer(nn.Module):
  """conv1x1 (no bias) - BN (train mode) - ReLU."""

  def __init__(self, c_in, c_out):
    super().__init__()
    self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
    self.bn = nn.BatchNorm2d(c_out)

  def forward(self, f):
    return F.relu(self.bn(self.conv(f)))


def lsgan_d(d_real, d_fake):
  return (1.0 - d_real).pow(2).mean() + d_fake.pow(2).mean()


def lsgan_g(d_fake):
  return (1.0 - d_fake).pow(2).mean()


def common_maps(maps):
  """Every NCHW map adaptive-average-pooled to the smallest (H, W) of the cohort."""
  h = min(f.shape[2] for f in maps)
  w = min(f.shape[3] for f in maps)
  return [f if f.shape[2:] == (h, w) else F.adaptive_avg_pool2d(f, (h, w)) for f in maps]


def afd_adversarial(maps, transfers, discs):
  """(sum_k L_G_k, sum_k L_D_k): D_k calls map k-1 real and map k fake (cyclic).

  `transfers[k]` is None where network k's map needs no channel change. The generator
  term uses D_k with detached parameters; the discriminator term detached maps.
  """
  feats = [f if t is None else t(f) for f, t in zip(common_maps(maps), transfers)]
  num = len(feats)
  g_total, d_total = 0.0, 0.0
  for k, disc in enumerate(discs):
    real, fake = feats[(k - 1) % num], feats[k]
    frozen = {name: p.detach() for name, p in disc.named_parameters()}
    g_total = g_total + lsgan_g(torch.func.functional_call(disc, frozen, (fake,)))
    d_total = d_total + lsgan_d(disc(real.detach()), disc(fake.detach()))
  return g_total, d_total
