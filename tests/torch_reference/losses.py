"""PyTorch reference losses, written from the papers' equations and mdistiller's conventions.

Test-only: these mirror the reference implementations' formulation (probabilities,
a -1000 target mask for NCKD) so kdjax's log-space versions are checked against
the numbers the PyTorch code produces on ordinary logits.
"""
import warnings

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


def dist(student_logits, teacher_logits, temperature, beta, gamma):
  """DIST's relation loss as its release computes it: Pearson rows (inter) and columns (intra)."""
  def rho(a, b, eps=1e-8):
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
  ys, yt = (student_logits / temperature).softmax(1), (teacher_logits / temperature).softmax(1)
  inter = 1 - rho(ys, yt).mean()
  intra = 1 - rho(ys.t(), yt.t()).mean()
  return temperature**2 * (beta * inter + gamma * intra)


class _Reverse(torch.autograd.Function):
  """CTKD's gradient reversal: identity forward, gradient times lambda backward."""

  @staticmethod
  def forward(ctx, x, lam):
    ctx.lam = lam
    return x.clone()

  @staticmethod
  def backward(ctx, grad):
    return ctx.lam * grad, None


def ctkd_lambda(epoch_from_1, lambda_max=0.0, lambda_min=-1.0, loops=10):
  """CTKD's cosine curriculum as its release computes it (epochs counted from 1)."""
  import math  # pylint: disable=import-outside-toplevel
  i = min(max(epoch_from_1, 0), loops)
  return (math.cos(i * math.pi / loops) + 1.0) * 0.5 * (lambda_max - lambda_min) + lambda_min


def ctkd_temperature(theta, lam, t_start=1.0, t_end=20.0):
  """The release's global temperature: t_start + t_end * sigmoid(grl(theta))."""
  return t_start + t_end * torch.sigmoid(_Reverse.apply(theta, lam))


def kd_batchmean(student_logits, teacher_logits, temperature):
  """KD as CTKD's release writes it (KLDivLoss batchmean * T^2), T a tensor."""
  return F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.softmax(teacher_logits / temperature, dim=1),
                  reduction="batchmean") * temperature * temperature


def ickd(f_s_embedded, f_t):
  """ICKD-C's CIFAR loss as its release computes it (NCHW maps, the student's already embedded)."""
  bsz, ch = f_s_embedded.shape[0], f_s_embedded.shape[1]
  a, b = f_s_embedded.reshape(bsz, ch, -1), f_t.reshape(bsz, ch, -1)
  g_s = F.normalize(torch.bmm(a, a.permute(0, 2, 1)), dim=2)
  g_t = F.normalize(torch.bmm(b, b.permute(0, 2, 1)), dim=2)
  return ((g_s - g_t) ** 2).reshape(bsz, -1).sum() / (ch * bsz)


def srrl_connector(s_n, t_n):
  """SRRL's connector as the SimKD release builds it: 1x1 conv (no bias), BatchNorm2d, ReLU."""
  return torch.nn.Sequential(torch.nn.Conv2d(s_n, t_n, 1, bias=False), torch.nn.BatchNorm2d(t_n),
                             torch.nn.ReLU())


def srrl(connector, cls_t, pooled_s, pooled_t, logits_t):
  """SRRL's term: MSE(h, pooled_t) + MSE(cls_t(h), z_t), h the connector on the pooled vector as 1x1."""
  h = connector(pooled_s.unsqueeze(-1).unsqueeze(-1)).view(pooled_s.shape[0], -1)
  return F.mse_loss(h, pooled_t) + F.mse_loss(cls_t(h), logits_t)


def _kl_element_mean(log_q, p):
  """`nn.KLDivLoss()` as the Tf-KD release calls it (reduction 'mean': over batch x classes)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch's note that this mean is not the KL's batch mean
    return torch.nn.KLDivLoss()(log_q, p)


def tfkd_self(student_logits, teacher_logits, labels, alpha, temperature, multiplier):
  """Tf-KD_self as its release computes it: nn.KLDivLoss() (element mean) * T^2 * multiplier."""
  kl = _kl_element_mean(F.log_softmax(student_logits / temperature, dim=1),
                            F.softmax(teacher_logits / temperature, dim=1)) * temperature**2 * multiplier
  return (1.0 - alpha) * F.cross_entropy(student_logits, labels) + alpha * kl


def tfkd_reg(student_logits, labels, alpha, temperature, multiplier, correct_prob=0.99):
  """Tf-KD_reg as its release computes it: a virtual teacher softmax(p^d / T), unscaled student."""
  k = student_logits.shape[1]
  p = torch.full_like(student_logits, (1 - correct_prob) / (k - 1))
  p[torch.arange(student_logits.shape[0]), labels] = correct_prob
  kl = _kl_element_mean(F.log_softmax(student_logits, dim=1), F.softmax(p / temperature, dim=1)) * multiplier
  return (1.0 - alpha) * F.cross_entropy(student_logits, labels) + alpha * kl


class SimKDProjector(torch.nn.Module):
  """SimKD's projector as its release builds it (module `transfer`: 1x1, BN, ReLU, 3x3, BN, ReLU,
  1x1, BN, ReLU; bottleneck t_n // factor)."""

  def __init__(self, s_n, t_n, factor=2):
    super().__init__()
    mid = t_n // factor
    self.transfer = torch.nn.Sequential(
        torch.nn.Conv2d(s_n, mid, 1, bias=False), torch.nn.BatchNorm2d(mid), torch.nn.ReLU(),
        torch.nn.Conv2d(mid, mid, 3, padding=1, bias=False), torch.nn.BatchNorm2d(mid), torch.nn.ReLU(),
        torch.nn.Conv2d(mid, t_n, 1, bias=False), torch.nn.BatchNorm2d(t_n), torch.nn.ReLU())

  def forward(self, feat_s, feat_t, cls_t):
    """(projected student map, aligned teacher map, prediction through cls_t), as the release."""
    s_h, t_h = feat_s.shape[2], feat_t.shape[2]
    if s_h > t_h:
      source, target = F.adaptive_avg_pool2d(feat_s, (t_h, t_h)), feat_t
    else:
      source, target = feat_s, F.adaptive_avg_pool2d(feat_t, (s_h, s_h))
    trans = self.transfer(source)
    return trans, target, cls_t(F.adaptive_avg_pool2d(trans, 1).flatten(1))


def sinkhorn(w1, w2, cost, reg, iters):
  """The WKD release's Sinkhorn: u from 1/N, v = w2 / (K^T u + 1e-8), u = w1 / (K v + 1e-8)."""
  w1, w2 = w1.unsqueeze(-1), w2.unsqueeze(-1)
  u = torch.ones_like(w1) / w1.shape[1]
  k = torch.exp(-cost / reg)
  for _ in range(iters):
    v = w2 / (torch.bmm(k.transpose(2, 1), u) + 1e-8)
    u = w1 / (torch.bmm(k, v) + 1e-8)
  return u.reshape(w1.shape[0], -1, 1) * k * v.reshape(w1.shape[0], 1, -1)


def wkd_logit(logits_s, logits_t, labels, cost, temperature, gamma, reg, iters):
  """WKD-L with target separation as its release computes it (mask, reshape, per-sample cost)."""
  n, c = logits_s.shape
  label = labels.view(-1, 1)
  loss_t = -(torch.gather(F.softmax(logits_t, 1), 1, label) * torch.gather(F.log_softmax(logits_s, 1), 1, label)).mean()
  mask = torch.ones_like(logits_s).scatter_(1, label, 0).bool()
  s, t = logits_s[mask].reshape(n, -1), logits_t[mask].reshape(n, -1)
  pair = cost.repeat(n, 1, 1)[(mask.unsqueeze(1) * mask.unsqueeze(2))].reshape(n, c - 1, c - 1)
  flow = sinkhorn(F.softmax(s / temperature, -1), F.softmax(t / temperature, -1), pair, reg, iters)
  return loss_t + gamma * (flow * pair).sum(-1).sum(-1).mean()


def wkd_feature(f_s, f_t, eps, grid, ratio):
  """WKD-F's Gaussian WD as its release computes it (NCHW; unbiased var; adaptive bins for grid > 1)."""
  def cells(f):
    if grid == 1:
      return f.mean(dim=(-1, -2)), torch.sqrt(f.var(dim=(-1, -2)) + eps)
    h, w = f.shape[2], f.shape[3]
    means, stds = [], []
    for i in range(grid):
      for j in range(grid):
        block = f[:, :, (i * h) // grid:-((-(i + 1) * h) // grid), (j * w) // grid:-((-(j + 1) * w) // grid)]
        means.append(block.mean(dim=(-1, -2)))
        stds.append(torch.sqrt(block.var(dim=(-1, -2)) + eps))
    return torch.stack(means, -1), torch.stack(stds, -1)
  (mu_s, sd_s), (mu_t, sd_t) = cells(f_s), cells(f_t)
  scale = grid**2 * f_s.shape[0]
  return ratio * F.mse_loss(mu_s, mu_t, reduction="sum") / scale + F.mse_loss(sd_s, sd_t, reduction="sum") / scale


def mlkd(s_weak, s_strong, t_weak, t_strong, labels, temperature=4.0, ce_weight=0.1, kd_weight=0.9,
         logit_stand=False):
  """MLKD's KD_ours.forward_train after the forward passes, as its release writes it (masks from
  numpy percentiles; masks multiplied onto already-reduced losses; weak logits in the strong
  KD's T = 2, 6 terms; the strong class/batch terms left out of the total)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  std = standardize if logit_stand else (lambda z: z)

  def kd_(s, t, temp):
    return F.kl_div(F.log_softmax(std(s) / temp, 1), F.softmax(std(t) / temp, 1),
                    reduction="none").sum(1).mean() * temp**2

  def cc_(s, t, temp):
    ps, pt = F.softmax(s / temp, 1), F.softmax(t / temp, 1)
    return ((pt.T @ pt - ps.T @ ps) ** 2).sum() / s.shape[1]

  def bc_(s, t, temp):
    ps, pt = F.softmax(s / temp, 1), F.softmax(t / temp, 1)
    return ((pt @ pt.T - ps @ ps.T) ** 2).sum() / s.shape[0]

  pred = F.softmax(t_weak.detach(), dim=1)
  conf, _ = pred.max(dim=1)
  mask = conf.le(float(np.percentile(conf.numpy().flatten(), 50))).bool()
  class_conf = torch.sum(pred, dim=0)
  class_mask = class_conf.le(float(np.percentile(class_conf.numpy().flatten(), 50))).bool()
  temps = (temperature, 3.0, 5.0, 2.0, 6.0)
  loss_ce = ce_weight * (F.cross_entropy(s_weak, labels) + F.cross_entropy(s_strong, labels))
  kd_weak = sum(kd_weight * (kd_(s_weak, t_weak, T) * mask).mean() for T in temps)
  kd_strong = (sum(kd_weight * kd_(s_strong, t_strong, T) for T in temps[:3])
               + sum(kd_weight * kd_(s_weak, t_weak, T) for T in temps[3:]))
  cc_weak = sum(kd_weight * (cc_(s_weak, t_weak, T) * class_mask).mean() for T in temps)
  bc_weak = sum(kd_weight * (bc_(s_weak, t_weak, T) * mask).mean() for T in temps)
  return loss_ce + kd_weak + kd_strong + cc_weak + bc_weak


def sskd_student(output, s_feat, knowledge, t_feat, target, batch, kd_T=4.0, tf_T=4.0, ss_T=0.5,
                 ratio_tf=1.0, ratio_ss=0.75, weights=(0.1, 0.9, 2.7, 10.0)):
  """SSKD's student loss as its release's `student.py` computes it, on 4B rows ordered image by
  image (rotations 0, 1, 2, 3 of image 0, then of image 1, ...); `s_feat`/`t_feat` are the
  projection heads' outputs. Ties of the error-level ranking are broken by position (stable)."""
  nor_index = (torch.arange(4 * batch) % 4 == 0)
  aug_index = (torch.arange(4 * batch) % 4 != 0)
  log_nor_output = F.log_softmax(output[nor_index] / kd_T, dim=1)
  log_aug_output = F.log_softmax(output[aug_index] / tf_T, dim=1)
  nor_knowledge = F.softmax(knowledge[nor_index] / kd_T, dim=1)
  aug_knowledge = F.softmax(knowledge[aug_index] / tf_T, dim=1)

  def keep(scores, targets, ratio):
    rank = torch.argsort(scores, dim=1, descending=True, stable=True)
    rank = torch.argmax(torch.eq(rank, targets.unsqueeze(1)).long(), dim=1)
    index = torch.argsort(rank, stable=True)
    wrong = torch.nonzero(rank, as_tuple=True)[0].numel()
    return torch.sort(index[:3 * batch - wrong + int(wrong * ratio)])[0]

  aug_target = target.unsqueeze(1).expand(-1, 3).contiguous().view(-1).long()
  distill_index_tf = keep(aug_knowledge, aug_target, ratio_tf)

  def simi(feat):
    nor, aug = feat[nor_index], feat[aug_index]
    nor = nor.unsqueeze(2).expand(-1, -1, 3 * batch).transpose(0, 2)
    aug = aug.unsqueeze(2).expand(-1, -1, 1 * batch)
    return F.cosine_similarity(aug, nor, dim=1)

  s_simi, t_simi = simi(s_feat), simi(t_feat).detach()
  distill_index_ss = keep(t_simi, torch.arange(batch).unsqueeze(1).expand(-1, 3).contiguous().view(-1).long(),
                          ratio_ss)
  loss1 = F.cross_entropy(output[nor_index], target)
  loss2 = F.kl_div(log_nor_output, nor_knowledge, reduction="batchmean") * kd_T * kd_T
  loss3 = F.kl_div(log_aug_output[distill_index_tf], aug_knowledge[distill_index_tf],
                   reduction="batchmean") * tf_T * tf_T
  loss4 = F.kl_div(F.log_softmax(s_simi / ss_T, dim=1)[distill_index_ss],
                   F.softmax(t_simi / ss_T, dim=1)[distill_index_ss], reduction="batchmean") * ss_T * ss_T
  return weights[0] * loss1 + weights[1] * loss2 + weights[2] * loss3 + weights[3] * loss4


def sskd_teacher_head(rep, batch):
  """The release's self-supervised loss of the teacher's head (rows image by image as above)."""
  nor_index = (torch.arange(4 * batch) % 4 == 0)
  aug_index = (torch.arange(4 * batch) % 4 != 0)
  nor = rep[nor_index].unsqueeze(2).expand(-1, -1, 3 * batch).transpose(0, 2)
  aug = rep[aug_index].unsqueeze(2).expand(-1, -1, 1 * batch)
  simi = F.cosine_similarity(aug, nor, dim=1)
  target = torch.arange(batch).unsqueeze(1).expand(-1, 3).contiguous().view(-1).long()
  return F.cross_entropy(simi, target)
