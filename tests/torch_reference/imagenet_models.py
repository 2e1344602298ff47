"""PyTorch versions of the ImageNet models of the DKD / CRD ImageNet experiments (test-only).

Written from the published architectures (docs/protocol.md §5.4): torchvision's ResNet-18/34/50 (the
layout of `resnet34-333f7ec4.pth` / `resnet50-19c8e357.pth`, mirrored by mdistiller
`models/imagenet/resnet.py`) and mdistiller's `models/imagenet/mobilenetv1.py`. Attribute names, and
so `state_dict` keys, shapes and order, are those of the originals. Every model returns
`(logits, {'feats': [...], 'preact_feats': [...], 'pooled': t})` in NCHW with mdistiller's feature
definitions, plus a stem tap f0 first for MobileNetV1 (kdjax's contract; see
`kdjax/models/imagenet_mobilenetv1.py`). Initialisation is PyTorch's default: the parity tests
overwrite every tensor with random values anyway.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Features = dict  # {'feats': list[Tensor], 'preact_feats': list[Tensor], 'pooled': Tensor}


def _bn(c: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(c)


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
  """torchvision's projection shortcut (`downsample.0` conv1x1, `downsample.1` BN), when needed."""
  if stride == 1 and cin == cout:
    return None
  return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _bn(cout))


class BasicBlock(nn.Module):
  """torchvision BasicBlock; returns (relu(sum), sum)."""
  expansion = 1

  def __init__(self, cin: int, planes: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
    self.bn1 = _bn(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
    self.bn2 = _bn(planes)
    self.downsample = _downsample(cin, planes, stride)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    pre = y + (x if self.downsample is None else self.downsample(x))
    return F.relu(pre), pre


class Bottleneck(nn.Module):
  """torchvision Bottleneck (stride on the 3x3 conv2, "v1.5"); returns (relu(sum), sum)."""
  expansion = 4

  def __init__(self, cin: int, planes: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = _bn(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
    self.bn2 = _bn(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = _bn(planes * 4)
    self.downsample = _downsample(cin, planes * 4, stride)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(y)))))
    pre = y + (x if self.downsample is None else self.downsample(x))
    return F.relu(pre), pre


class ResNet(nn.Module):
  """torchvision ResNet: 7x7/2 stem, 3x3/2 max-pool, 4 stages, adaptive average pool, fc."""

  def __init__(self, block: type, num_blocks: tuple[int, ...], num_classes: int = 1000):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    self.bn1 = _bn(64)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    cin = 64
    for k, (planes, n, stride) in enumerate(zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)), start=1):
      blocks = []
      for i in range(n):
        blocks.append(block(cin, planes, stride if i == 0 else 1))
        cin = planes * block.expansion
      setattr(self, f"layer{k}", nn.Sequential(*blocks))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
    stem = self.bn1(self.conv1(x))
    x = self.relu(stem)
    feats, pres = [x], [stem]  # mdistiller: the stem tap is taken before the max-pool
    x = self.maxpool(x)
    for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
      for blk in stage:
        x, pre = blk(x)
      feats.append(x)
      pres.append(pre)
    pooled = self.avgpool(x).flatten(1)
    return self.fc(pooled), {"feats": feats, "preact_feats": pres, "pooled": pooled}


# ---------------------------------------------------------------------------------------------
# MobileNetV1 (mdistiller)

# (cin, cout, stride) of model.1 .. model.13.
_MV1_BLOCKS = ((32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
               (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1),
               (512, 1024, 2), (1024, 1024, 1))


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
  return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _bn(cout), nn.ReLU())


def _conv_dw(cin: int, cout: int, stride: int) -> nn.Sequential:
  return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), _bn(cin), nn.ReLU(),
                       nn.Conv2d(cin, cout, 1, 1, 0, bias=False), _bn(cout), nn.ReLU())


class MobileNetV1(nn.Module):
  """mdistiller's ImageNet MobileNetV1: `model.0..13` conv blocks, `model.14` AvgPool2d(7), `fc`."""

  def __init__(self, num_classes: int = 1000):
    super().__init__()
    self.model = nn.Sequential(_conv_bn(3, 32, 2), *[_conv_dw(*cfg) for cfg in _MV1_BLOCKS],
                               nn.AvgPool2d(7))  # as published: global only on 224-pixel inputs
    self.fc = nn.Linear(1024, num_classes)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
    feats, pres = [], []
    for i in range(14):
      block = self.model[i]
      pre = block[:-1](x)  # the block without its final ReLU
      x = block[-1](pre)
      if i in (0, 3, 5, 11, 13):  # stem (kdjax's f0), then mdistiller's four taps
        feats.append(x)
        pres.append(pre)
    pooled = self.model[14](x).reshape(-1, 1024)
    return self.fc(pooled), {"feats": feats, "preact_feats": pres, "pooled": pooled}


MODELS: dict[str, Callable[..., nn.Module]] = {
    "imagenet_resnet18": lambda num_classes=1000: ResNet(BasicBlock, (2, 2, 2, 2), num_classes),
    "imagenet_resnet34": lambda num_classes=1000: ResNet(BasicBlock, (3, 4, 6, 3), num_classes),
    "imagenet_resnet50": lambda num_classes=1000: ResNet(Bottleneck, (3, 4, 6, 3), num_classes),
    "imagenet_mobilenetv1": MobileNetV1,
}
