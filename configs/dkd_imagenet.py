"""DKD (Zhao et al., CVPR 2022) on ImageNet (TFDS imagenet2012): the paper's two pairs.

mdistiller `configs/imagenet/{r34_r18,r50_mv1}/dkd.yaml` (docs/methods.md §2.3): CE weight
1, alpha 1, T=1, beta 0.5 (ResNet34 -> ResNet18) / 2.0 (ResNet50 -> MobileNetV1),
warmup 1 epoch counted from 1 (factor 1 from the first epoch); the ImageNet recipe
of configs/kd_imagenet.py (100 epochs, global batch 512, LR 0.2 x0.1 at 30/60/90,
weight decay 1e-4, bfloat16 compute, torchvision teachers from `teachers/*.pth`).
The paper's "MobileNet-V2" on ImageNet is MobileNetV1 (mdistiller issue #25).

    wget -P teachers https://download.pytorch.org/models/resnet34-333f7ec4.pth
    python -m kdjax.main --config=configs/dkd_imagenet.py:imagenet_resnet34,imagenet_resnet18 \
        --config.data.data_dir=/data/tfds --workdir=runs/dkd_imagenet_r34_r18

Published top-1 (experiments/repro/tables.py): mdistiller README / DKD paper top-1 (best epoch, mean of 3 runs).
"""
from kdjax import recipes


def _kd_imagenet():
  """configs/kd_imagenet.py, the shared ImageNet recipe."""
  return recipes.sibling_config(__file__, "kd_imagenet.py")


DEFAULT_PAIR = "imagenet_resnet34,imagenet_resnet18"

PAIRS = {
    "imagenet_resnet34,imagenet_resnet18": {"dkd.beta": 0.5},
    "imagenet_resnet50,imagenet_mobilenetv1": {"dkd.beta": 2.0},
}


def get_config(pair: str = DEFAULT_PAIR):
  """DKD config for an ImageNet `teacher,student` pair."""
  c = _kd_imagenet().imagenet_protocol(recipes.distill_config("dkd", pair, DEFAULT_PAIR, PAIRS))
  c.dkd.alpha = 1.0
  c.dkd.temperature = 1.0
  c.dkd.ce_weight = 1.0
  c.dkd.warmup_epochs = 1.0
  c.dkd.warmup_epoch_base = 1
  return c
