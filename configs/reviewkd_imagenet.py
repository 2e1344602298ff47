"""ReviewKD (Chen et al., CVPR 2021) on ImageNet (TFDS imagenet2012): the paper's two pairs.

mdistiller's ImageNet port (docs/methods.md §3.4, docs/protocol.md §2): global batch 256, LR
0.1 (the official release's 4 GPUs x 64 at 0.1 per 256 images), CE weight 1,
feature-loss weight 1.0 (ResNet34 -> ResNet18) / 8.0 (ResNet50 -> MobileNetV1),
C_mid = min(512, 512) / min(256, 1024), warmup 1 epoch counted from 1; otherwise the
ImageNet recipe of configs/kd_imagenet.py (100 epochs, LR x0.1 at 30/60/90, weight
decay 1e-4, bfloat16 compute, torchvision teachers from `teachers/*.pth`). The five
review levels (stages 1-4 plus the pooled vector) come from the features, e.g.
channels 64/128/256/512/512 at 56/28/14/7/1 for ResNet18, as in mdistiller.

Difference: mdistiller sets STU_PREACT True on ImageNet (the student's pre-ReLU stage
outputs feed the ABFs); kdjax's reviewkd always uses the student's post-ReLU
outputs (the CIFAR release), so this config is not bit-identical to that recipe.

    python -m kdjax.main --config=configs/reviewkd_imagenet.py:imagenet_resnet34,imagenet_resnet18 \
        --config.data.data_dir=/data/tfds --workdir=runs/reviewkd_imagenet_r34_r18

Published top-1 (experiments/repro/tables.py): ReviewKD `ImageNet/README.md` top-1 (best epoch; docs/protocol.md §4.4).
"""
from kdjax import recipes


def _kd_imagenet():
  """configs/kd_imagenet.py, the shared ImageNet recipe."""
  return recipes.sibling_config(__file__, "kd_imagenet.py")


DEFAULT_PAIR = "imagenet_resnet34,imagenet_resnet18"

PAIRS = {
    "imagenet_resnet34,imagenet_resnet18": {"reviewkd.weight": 1.0, "reviewkd.max_mid_channel": 512},
    "imagenet_resnet50,imagenet_mobilenetv1": {"reviewkd.weight": 8.0,
                                               "reviewkd.max_mid_channel": 256},
}


BATCH_SIZE = 256
LR = 0.1


def get_config(pair: str = DEFAULT_PAIR):
  """ReviewKD config for an ImageNet `teacher,student` pair."""
  c = _kd_imagenet().imagenet_protocol(
      recipes.distill_config("reviewkd", pair, DEFAULT_PAIR, PAIRS))
  c.batch_size = BATCH_SIZE
  c.eval_batch_size = BATCH_SIZE
  c.optim.lr = LR
  c.reviewkd.ce_weight = 1.0
  c.reviewkd.warmup_epochs = 1.0
  c.reviewkd.warmup_epoch_base = 1
  return c
