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
