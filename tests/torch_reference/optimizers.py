"""PyTorch reference optimizers written from their update equations (test-only)."""
import torch


class DOT:
  """DOT (ICCV 2023) as mdistiller's trainer applies it: the task gradient (plus weight decay)
  into a momentum-(m - delta) buffer, the distillation gradient into a momentum-(m + delta)
  buffer, each buffer started as a copy of its first gradient, then p -= lr * b_task and
  p -= lr * b_distill, in that order."""

  def __init__(self, params, lr, momentum, delta, weight_decay):
    self.params = list(params)
    self.lr, self.wd = lr, weight_decay
    self.m_task, self.m_distill = momentum - delta, momentum + delta
    self.b_task = [None] * len(self.params)
    self.b_distill = [None] * len(self.params)

  @torch.no_grad()
  def step(self, task_grads, distill_grads):
    for i, (p, g_t, g_d) in enumerate(zip(self.params, task_grads, distill_grads)):
      d = g_t + self.wd * p
      if self.b_task[i] is None:
        self.b_task[i] = d.clone()
      else:
        self.b_task[i].mul_(self.m_task).add_(d)
      p.add_(self.b_task[i], alpha=-self.lr)
    for i, (p, g_d) in enumerate(zip(self.params, distill_grads)):
      if self.b_distill[i] is None:
        self.b_distill[i] = g_d.clone()
      else:
        self.b_distill[i].mul_(self.m_distill).add_(g_d)
      p.add_(self.b_distill[i], alpha=-self.lr)
