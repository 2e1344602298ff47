"""KD (Hinton et al. 2015) on ImageNet (TFDS imagenet2012): mdistiller's two pairs.

mdistiller `configs/imagenet/{r34_r18,r50_mv1}/kd.yaml` (docs/methods.md §1, docs/protocol.md
§2): T=1, CE weight 0.5, KD weight 0.5; 100 epochs, global batch 512, SGD momentum
0.9, LR 0.2 x0.1 from epochs 30/60/90, weight decay 1e-4; bfloat16 compute (float32
parameters, BatchNorm statistics and losses). Augmentation (RandomResizedCrop 224 +
flip; eval Resize 256 + CenterCrop 224) runs in the tf.data pipeline
(kdjax/data/imagenet.py), not in the step. BatchNorm statistics are over the global
batch (mdistiller's DataParallel used 64 images per GPU; docs/protocol.md §2).

The teacher is torchvision's pretrained ResNet34 / ResNet50 (v1 weights), never
trained here: download the .pth into `teachers/` (or point
--config.teacher.checkpoint at it or at its `python -m kdjax.convert` directory):

    wget -P teachers https://download.pytorch.org/models/resnet34-333f7ec4.pth
    python -m kdjax.main --config=configs/kd_imagenet.py:imagenet_resnet34,imagenet_resnet18 \
        --config.data.data_dir=/data/tfds --workdir=runs/kd_imagenet_r34_r18

Published top-1 (experiments/repro/tables.py): mdistiller README top-1 (best epoch, mean of 3 runs; docs/protocol.md §4.4).
"""
from kdjax import recipes

DEFAULT_PAIR = "imagenet_resnet34,imagenet_resnet18"

# torchvision v1 weights, the teachers of every ImageNet KD paper (docs/protocol.md §2).
TEACHER_CHECKPOINTS = {
    "imagenet_resnet34": "teachers/resnet34-333f7ec4.pth",
    "imagenet_resnet50": "teachers/resnet50-19c8e357.pth",
}

PAIRS = {
    "imagenet_resnet34,imagenet_resnet18": {},
    "imagenet_resnet50,imagenet_mobilenetv1": {},
}


def imagenet_protocol(c):
  """The mdistiller ImageNet recipe on a distillation config (docs/protocol.md §2)."""
  c.data.name = "imagenet2012"
  # The tf.data pipeline crops and flips; no CIFAR padding-crop on top of it.
  c.data.crop_padding = 0
  c.data.flip = False
  c.dtype = "bfloat16"
  c.epochs = 100
  c.batch_size = 512
  c.eval_batch_size = 512
  c.optim.lr = 0.2
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.weight_decay = 1e-4
  c.optim.lr_milestones = (30, 60, 90)
  c.optim.lr_decay = 0.1
  c.teacher.checkpoint = TEACHER_CHECKPOINTS[c.teacher.arch]
  # Only if the checkpoint is emptied would the engine auto-train; keep that recipe ImageNet's.
  c.teacher.train_epochs = 100
  c.teacher.train_lr = 0.2
  c.teacher.train_lr_milestones = (30, 60, 90)
  c.log_every_steps = 100
  return c


def get_config(pair: str = DEFAULT_PAIR):
  """KD config for an ImageNet `teacher,student` pair."""
  c = recipes.distill_config("kd", pair, DEFAULT_PAIR, PAIRS)
  c = imagenet_protocol(c)
  c.kd.temperature = 1.0
  c.kd.ce_weight = 0.5
  c.kd.kd_weight = 0.5
  return c
