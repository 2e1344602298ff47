"""kdjax's train step against the same step in PyTorch, side by side on this machine: a ratio.

    python experiments/vs_pytorch.py                       # DKD resnet32x4 -> resnet8x4, batch 64
    python experiments/vs_pytorch.py --method=vanilla --student=resnet32x4   # teacher training
    python experiments/vs_pytorch.py --method=kd --rounds=5 --steps=5
    python experiments/vs_pytorch.py --method=reviewkd     # or --method=crd (50,000 training images)

The PyTorch side is the reference of the parity tests (tests/torch_reference: the published
architectures, mdistiller's losses) updated by `torch.optim.SGD(momentum=0.9, weight_decay=5e-4)`
on CPU, the way mdistiller trains: teacher forward under `no_grad` in eval mode, student
forward, loss, backward, step. The kdjax side is the trainer's compiled step (`train.build`:
on-device batch gather and augmentation included, which PyTorch's data loader does on other
cores), on the XLA devices the command line would use (one per core, kdjax/cpu.py). Both run float32 on the same random batch, in alternating rounds (`--rounds` of
`--steps` steps each after `--warmup`), because these machines are noisy; the ratio is computed
from each side's median round. `ratio kdjax/pytorch` > 1 means kdjax trains faster.
ReviewKD and CRD take their hyperparameters from configs/<method>_cifar.py for the pair on
both sides: ReviewKD's ABF head (tests/torch_reference/reviewkd.py, kdjax's level plan) and
HCL; CRD's embeddings, its two 128-d memory banks over 50,000 images (CIFAR-100's training
set) and K = 16384 negatives, updated in place as RepDistiller does. The contrast indices
are drawn once outside PyTorch's step (RepDistiller's data loader draws them on other cores)
and inside kdjax's.
torch is an optional dependency here (requirements-test.txt), not one of kdjax's.
"""
from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from kdjax import cpu, data, models, recipes, train  # noqa: E402

_METHOD = flags.DEFINE_enum("method", "dkd", ["dkd", "kd", "vanilla", "reviewkd", "crd"],
                            "Method timed on both sides.")
_TEACHER = flags.DEFINE_string("teacher", "resnet32x4", "Teacher architecture (ignored by vanilla).")
_STUDENT = flags.DEFINE_string("student", "resnet8x4", "Student architecture.")
_BATCH = flags.DEFINE_integer("batch", 64, "Batch size.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Alternating timing rounds per side.")
_STEPS = flags.DEFINE_integer("steps", 5, "Steps per round.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per side first.")
_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads (0: torch's default).")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 0, "XLA devices on the CPU, as kdjax.main's flag "
                                    "(0: one per core dividing the batch, what the CLI does; 1: one).")

MEAN, STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
_CONFIGURED = ("reviewkd", "crd")  # hyperparameters from configs/<method>_cifar.py for the pair


def _config():
  """The kdjax config of the timed step."""
  if _METHOD.value in _CONFIGURED:
    module = recipes.load_config_module(os.path.join(ROOT, "configs", f"{_METHOD.value}_cifar.py"))
    config = module.get_config(f"{_TEACHER.value},{_STUDENT.value}")
  else:
    config = recipes.base_config()
    config.method, config.model = _METHOD.value, _STUDENT.value
    config.teacher.arch = "" if _METHOD.value == "vanilla" else _TEACHER.value
  config.batch_size = _BATCH.value
  return config


def _kdjax_step(images: np.ndarray, labels: np.ndarray):
  """A function running one compiled kdjax step (state threaded inside), and its compile time."""
  config = _config()
  dataset = data.Dataset("synthetic_cifar100", images, labels, images[:500], labels[:500], 100, MEAN, STD)
  teachers = []
  if config.teacher.arch:
    teacher = models.get(config.teacher.arch, num_classes=100)
    teachers = [train.Teacher(teacher, jax.jit(teacher.init)(jax.random.key(1), images[:1].astype(np.float32)))]
  mesh = train.make_mesh(jax.devices())
  run = train.build(config, dataset, mesh, teachers)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  args = (run.teacher_vars, jax.device_put(images, replicated), jax.device_put(labels, replicated),
          run.permute(jax.random.key(0)))
  t0 = time.perf_counter()
  compiled = run.train_step.lower(run.state, *args).compile()
  compile_s = time.perf_counter() - t0
  box = [run.state]

  def step():
    box[0], metrics = compiled(box[0], *args)
    return metrics["loss"]

  return step, compile_s


def _torch_step(images: np.ndarray, labels: np.ndarray, num_train: int):
  """One PyTorch step of the same method (mdistiller's loss; torch.optim.SGD)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  from tests.torch_reference import losses as ref  # pylint: disable=import-outside-toplevel
  from tests.torch_reference import models as torch_models  # pylint: disable=import-outside-toplevel
  if _THREADS.value:
    torch.set_num_threads(_THREADS.value)
  torch.manual_seed(0)
  config = _config()
  student = torch_models.MODELS[_STUDENT.value](num_classes=100).train()
  teacher = None if _METHOD.value == "vanilla" else torch_models.MODELS[_TEACHER.value](num_classes=100).eval()
  b = _BATCH.value
  x = (images[:b].astype(np.float32) / 255.0 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
  x = torch.tensor(x.transpose(0, 3, 1, 2).copy())
  y = torch.tensor(labels[:b], dtype=torch.long)
  extra, term = [], None
  if _METHOD.value in _CONFIGURED:
    with torch.no_grad():
      shapes = (student(x[:2]), teacher(x[:2]))
    make = _torch_reviewkd if _METHOD.value == "reviewkd" else _torch_crd
    extra, term = make(config, *shapes, b, num_train)
  params = list(student.parameters()) + [p for m in extra for p in m.parameters()]
  opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)

  def step():
    if teacher is not None:
      with torch.no_grad():
        t_out = teacher(x)
    s_out = student(x)
    loss = F.cross_entropy(s_out[0], y)
    if _METHOD.value == "kd":
      loss = 0.1 * loss + 0.9 * ref.kd(s_out[0], t_out[0], 4.0)
    elif _METHOD.value == "dkd":
      loss = loss + ref.dkd(s_out[0], t_out[0], y, 1.0, 8.0, 4.0)
    elif term is not None:
      loss = getattr(config, _METHOD.value).ce_weight * loss + term(s_out, t_out)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss

  return step, torch.get_num_threads()


def _torch_reviewkd(config, s_out, t_out, batch: int, num_train: int):
  """([ABF head], (student out, teacher out) -> weight x HCL): the levels of kdjax's plan.
  The warmup factor is left out: it scales the term, not the work."""
  del batch, num_train
  from types import SimpleNamespace  # pylint: disable=import-outside-toplevel
  from kdjax.methods import reviewkd  # pylint: disable=import-outside-toplevel
  from tests.torch_reference import reviewkd as ref  # pylint: disable=import-outside-toplevel
  nhwc = lambda t: SimpleNamespace(shape=(t.shape[0], *t.shape[2:], t.shape[1]) if t.ndim == 4
                                   else (t.shape[0], 1, 1, t.shape[1]))
  s_levels = lambda out: list(out[1]["feats"][1:]) + [out[1]["pooled"][:, :, None, None]]
  t_levels = lambda out: list(out[1]["preact_feats"][1:]) + [out[1]["pooled"][:, :, None, None]]
  plan = reviewkd.make_plan([nhwc(f) for f in s_levels(s_out)], [nhwc(f) for f in t_levels(t_out)],
                            int(config.reviewkd.max_mid_channel))
  head = ref.ReviewHead(plan.in_channels, plan.out_channels, plan.out_shapes, plan.mid_channels).train()
  weight = float(config.reviewkd.weight)
  return [head], lambda s, t: weight * ref.hcl(head(s_levels(s)), t_levels(t))


def _torch_crd(config, s_out, t_out, batch: int, num_train: int):
  """([both embeddings], (student out, teacher out) -> CRD term), RepDistiller's step: scores
  against the other side's bank, Z fixed at the first step, NCE, banks updated in place."""
  import math  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from tests.torch_reference import crd_ofd_kdsvd as ref  # pylint: disable=import-outside-toplevel
  c = config.crd
  dim, k, tau, momentum = int(c.feat_dim), int(c.nce_k), float(c.nce_t), float(c.nce_m)
  embed_s, embed_t = ref.Embed(s_out[1]["pooled"].shape[1], dim), ref.Embed(t_out[1]["pooled"].shape[1], dim)
  stdv = 1.0 / math.sqrt(dim / 3)
  memory_s, memory_t = (torch.rand(num_train, dim) * 2 * stdv - stdv for _ in range(2))
  rng = np.random.default_rng(1)
  index = torch.tensor(rng.choice(num_train, batch, replace=False))
  contrast = torch.tensor(np.concatenate([index.numpy()[:, None], rng.integers(0, num_train, (batch, k))], 1))
  z = [-1.0, -1.0]

  def term(s, t):
    v_s, v_t = embed_s(s[1]["pooled"]), embed_t(t[1]["pooled"])
    flat = contrast.reshape(-1)
    out_s = torch.exp(torch.bmm(memory_t.index_select(0, flat).view(batch, k + 1, dim), v_s.view(batch, dim, 1)) / tau)
    out_t = torch.exp(torch.bmm(memory_s.index_select(0, flat).view(batch, k + 1, dim), v_t.view(batch, dim, 1)) / tau)
    for side, out in enumerate((out_s, out_t)):
      if z[side] < 0:
        z[side] = (out.mean() * num_train).item()
    with torch.no_grad():
      for memory, v in ((memory_s, v_s), (memory_t, v_t)):
        rows = memory.index_select(0, index) * momentum + v * (1 - momentum)
        memory.index_copy_(0, index, rows / rows.pow(2).sum(1, keepdim=True).pow(0.5))
    return float(c.feat_weight) * (ref.nce(out_s / z[0], num_train) + ref.nce(out_t / z[1], num_train)).squeeze()

  return [embed_s, embed_t], term


def _round(step, n: int, sync) -> float:
  t0 = time.perf_counter()
  for _ in range(n):
    out = step()
  sync(out)
  return (time.perf_counter() - t0) / n


def setup() -> tuple[np.ndarray, np.ndarray]:
  """Splits the CPU into XLA devices as the command line does (before JAX's first call), then the
  random uint8 images and labels every side trains on (this script's, ab_step.py's, cpu_profile.py's)."""
  config = recipes.base_config()
  config.batch_size = _BATCH.value
  cpu.split_cpu(config, _CPU_DEVICES.value)
  rng = np.random.default_rng(0)
  n = 50000 if _METHOD.value == "crd" else max(_BATCH.value * 8, 512)  # CRD: a bank row per CIFAR image
  return (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
          rng.integers(0, 100, n).astype(np.int32))


def main(argv):
  del argv
  images, labels = setup()
  n = len(images)
  jstep, compile_s = _kdjax_step(images, labels)
  tstep, threads = _torch_step(images, labels, n)
  jsync, tsync = jax.block_until_ready, lambda loss: float(loss.detach())
  _round(jstep, _WARMUP.value, jsync)
  _round(tstep, _WARMUP.value, tsync)
  j_times, t_times = [], []
  for _ in range(_ROUNDS.value):
    j_times.append(_round(jstep, _STEPS.value, jsync))
    t_times.append(_round(tstep, _STEPS.value, tsync))
  j, t = float(np.median(j_times)), float(np.median(t_times))
  pair = _STUDENT.value if _METHOD.value == "vanilla" else f"{_TEACHER.value} -> {_STUDENT.value}"
  print(f"{_METHOD.value} {pair}, batch {_BATCH.value}, float32, {cpu.usable_cores()} CPU cores "
        f"(jax {jax.__version__}, {jax.device_count()} XLA devices, compile {compile_s:.1f} s; "
        f"torch threads {threads})")
  print(f"kdjax   {1000 * j:7.1f} ms/step  {_BATCH.value / j:6.1f} images/s  "
        f"(rounds: {', '.join(f'{1000 * v:.0f}' for v in j_times)} ms)")
  print(f"pytorch {1000 * t:7.1f} ms/step  {_BATCH.value / t:6.1f} images/s  "
        f"(rounds: {', '.join(f'{1000 * v:.0f}' for v in t_times)} ms)")
  print(f"ratio kdjax/pytorch {t / j:.2f}")


if __name__ == "__main__":
  app.run(main)
