"""PyTorch versions of the 22 CIFAR architectures of the CRD / mdistiller model zoo (test-only).

Written from the published architecture descriptions (docs/protocol.md §5.4, docs/methods.md §0.6): module
attribute names, and therefore `state_dict` keys and shapes, are exactly those of the released
checkpoints, so a file saved from these models has the layout of a RepDistiller / mdistiller
checkpoint. Every model returns `(logits, {'feats': [...], 'preact_feats': [...], 'pooled': t})`
in NCHW, with mdistiller's feature definitions. Weight initialisation is PyTorch's default: the
parity tests overwrite every tensor with random values anyway.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Features = dict  # {'feats': list[Tensor], 'preact_feats': list[Tensor], 'pooled': Tensor}


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
  """Conv2d with the `padding=k // 2` every model of the zoo uses."""
  return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=bias)


def _run_stage(stage: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
  """Runs blocks that return `(out, preact)`; returns the last block's pair."""
  pre = x
  for block in stage:
    x, pre = block(x)
  return x, pre


# ---------------------------------------------------------------------------------------------
# CIFAR ResNet (resnet8 ... resnet110, resnet8x4, resnet32x4)


class ResBasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN + (projected) shortcut; returns (relu(sum), sum)."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1 = _conv(cin, cout, 3, stride)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = _conv(cout, cout, 3)
    self.bn2 = nn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                      nn.BatchNorm2d(cout))

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    pre = y + (x if self.downsample is None else self.downsample(x))
    return F.relu(pre), pre


class CifarResNet(nn.Module):
  """`ResNet(depth, num_filters, 'basicblock')`: stem, 3 stages of (depth-2)/6 blocks, fc."""

  def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100):
    super().__init__()
    n = (depth - 2) // 6
    self.conv1 = _conv(3, widths[0], 3)
    self.bn1 = nn.BatchNorm2d(widths[0])
    cin = widths[0]
    for k, (cout, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
      blocks = [ResBasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)]
      setattr(self, f"layer{k}", nn.Sequential(*blocks))
      cin = cout
    self.fc = nn.Linear(widths[3], num_classes)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
    x = F.relu(self.bn1(self.conv1(x)))
    feats, pres = [x], [x]
    for stage in (self.layer1, self.layer2, self.layer3):
      x, pre = _run_stage(stage, x)
      feats.append(x)
      pres.append(pre)
    pooled = F.avg_pool2d(x, 8).flatten(1)
    return self.fc(pooled), {"feats": feats, "preact_feats": pres, "pooled": pooled}


# ---------------------------------------------------------------------------------------------
# Wide ResNet (pre-activation)


class WideBlock(nn.Module):
  """BN-ReLU-conv3x3-BN-ReLU-conv3x3; with in != out the shortcut is a 1x1 conv of relu(bn1(x))."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv1 = _conv(cin, cout, 3, stride)
    self.bn2 = nn.BatchNorm2d(cout)
    self.conv2 = _conv(cout, cout, 3)
    self.convShortcut = None  # pylint: disable=invalid-name  (published key name)
    if cin != cout:
      self.convShortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    a = F.relu(self.bn1(x))
    y = self.conv2(F.relu(self.bn2(self.conv1(a))))
    return y + (x if self.convShortcut is None else self.convShortcut(a))


class WideStage(nn.Module):
  """`NetworkBlock`: its blocks live under `.layer` (keys `block{k}.layer.{i}.*`)."""

  def __init__(self, n: int, cin: int, cout: int, stride: int):
    super().__init__()
    self.layer = nn.Sequential(*[WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                 for i in range(n)])

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.layer(x)


class WideResNet(nn.Module):
  """WRN-depth-k: stem conv (no BN), 3 stages of (depth-4)/6 pre-act blocks, BN-ReLU, fc."""

  def __init__(self, depth: int, widen: int, num_classes: int = 100):
    super().__init__()
    n = (depth - 4) // 6
    ch = (16, 16 * widen, 32 * widen, 64 * widen)
    self.conv1 = _conv(3, ch[0], 3)
    self.block1 = WideStage(n, ch[0], ch[1], 1)
    self.block2 = WideStage(n, ch[1], ch[2], 2)
    self.block3 = WideStage(n, ch[2], ch[3], 2)
    self.bn1 = nn.BatchNorm2d(ch[3])
    self.fc = nn.Linear(ch[3], num_classes)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
    f0 = self.conv1(x)
    f1 = self.block1(f0)
    f2 = self.block2(f1)
    f3 = self.block3(f2)
    pooled = F.avg_pool2d(F.relu(self.bn1(f3)), 8).flatten(1)
    logits = self.fc(pooled)
    # "preact" = the next BN applied without its ReLU; in train mode these calls update those
    # BNs' running statistics a second time, as in the reference.
    pres = [f0, self.block2.layer[0].bn1(f1), self.block3.layer[0].bn1(f2), self.bn1(f3)]
    return logits, {"feats": [f0, f1, f2, f3], "preact_feats": pres, "pooled": pooled}


# ---------------------------------------------------------------------------------------------
# VGG-BN


_VGG_CFG = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _vgg_block(cin: int, widths: list[int]) -> nn.Sequential:
  """[conv3x3 (bias), BN, ReLU] per width, the trailing ReLU dropped (applied in forward)."""
  mods: list[nn.Module] = []
  for w in widths:
    mods += [_conv(cin, w, 3, bias=True), nn.BatchNorm2d(w), nn.ReLU()]
    cin = w
  return nn.Sequential(*mods[:-1])


class VGG(nn.Module):
  """VGG-BN for CIFAR: five conv blocks, max-pools between them, global average pool, classifier."""

  def __init__(self, cfg: list[list[int]], num_classes: int = 100):
    super().__init__()
    cin = 3
    for i, widths in enumerate(cfg):
      setattr(self, f"block{i}", _vgg_block(cin, widths))
      cin = widths[-1]
    self.classifier = nn.Linear(512, num_classes)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
    h = x.shape[2]
    x = F.relu(self.block0(x))
    feats, pres = [x], [x]
    for i, block in enumerate((self.block1, self.block2, self.block3, self.block4), start=1):
      # pool3 exists only for 64-pixel inputs: on CIFAR block4 runs at 4x4.
      if i < 4 or h == 64:
        x = F.max_pool2d(x, 2, 2)
      pre = block(x)
      x = F.relu(pre)
      feats.append(x)
      pres.append(pre)
    pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return self.classifier(pooled), {"feats": feats, "preact_feats": pres, "pooled": pooled}


# ---------------------------------------------------------------------------------------------
# MobileNetV2 (mobile_half: expansion 6, width 0.5)


class InvertedResidual(nn.Module):
  """pw-BN-ReLU, dw3x3-BN-ReLU, pw-linear-BN inside `.conv` (indices 0..7); residual when possible."""

  def __init__(self, cin: int, cout: int, stride: int, expand: int):
    super().__init__()
    mid = cin * expand
    self.use_res = stride == 1 and cin == cout
    self.conv = nn.Sequential(
        nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
        _conv(mid, mid, 3, stride, groups=mid), nn.BatchNorm2d(mid), nn.ReLU(),
        nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
  """CIFAR MobileNetV2 with the published (t, c, n, s) table; conv2 widens to 1280."""

  def __init__(self, expand: int = 6, width: float = 0.5, num_classes: int = 100):
    super().__init__()
    settings = [(1, 16, 1, 1), (expand, 24, 2, 1), (expand, 32, 3, 2), (expand, 64, 4, 2),
                (expand, 96, 3, 1), (expand, 160, 3, 2), (expand, 320, 1, 1)]
    cin = int(32 * width)
    self.conv1 = nn.Sequential(_conv(3, cin, 3, 2), nn.BatchNorm2d(cin), nn.ReLU())
    self.blocks = nn.ModuleList()
    for t, c, n, s in settings:
      cout = int(c * width)
      stage = []
      for i in range(n):
        stage.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
        cin = cout
      self.blocks.append(nn.Sequential(*stage))
    last = int(1280 * width) if width > 1.0 else 1280
    self.conv2 = nn.Sequential(nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU())
    self.classifier = nn.Sequential(nn.Linear(last, num_classes))

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
    x = self.conv1(x)
    feats = [x]
    for i, stage in enumerate(self.blocks):
      x = stage(x)
      if i in (1, 2, 4, 6):  # taps after stages 1, 2, 4 and 6, as published
        feats.append(x)
    x = self.conv2(x)
    # AvgPool2d(input_size // 16, ceil_mode=True) = 2x2 window on the final 2x2 map.
    pooled = F.avg_pool2d(x, 2, ceil_mode=True).flatten(1)
    # Stages end in a linear bottleneck (no ReLU), so pre-activation taps equal the feats.
    return self.classifier(pooled), {"feats": feats, "preact_feats": list(feats), "pooled": pooled}


# ---------------------------------------------------------------------------------------------
# ShuffleNet V1 / V2


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
  """[N, g*c, H, W] -> view [N, g, c, H, W] -> swap g and c -> flatten back."""
  n, ch, h, w = x.shape
  return x.reshape(n, groups, ch // groups, h, w).transpose(1, 2).reshape(n, ch, h, w)


class ShuffleV1Block(nn.Module):
  """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; stride 2 concatenates an avg-pooled input."""

  def __init__(self, cin: int, cout: int, stride: int, groups: int):
    super().__init__()
    mid = cout // 4
    self.stride = stride
    self.g1 = 1 if cin == 24 else groups  # the stem output (24 ch) is not grouped
    self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.g1, bias=False)
    self.bn1 = nn.BatchNorm2d(mid)
    self.conv2 = _conv(mid, mid, 3, stride, groups=mid)
    self.bn2 = nn.BatchNorm2d(mid)
    self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
    self.bn3 = nn.BatchNorm2d(cout)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.g1)
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    if self.stride == 2:
      # AvgPool2d(3, 2, 1) counts the padded zeros in the divisor (count_include_pad=True).
      pre = torch.cat([y, F.avg_pool2d(x, 3, 2, 1, count_include_pad=True)], 1)
    else:
      pre = y + x
    return F.relu(pre), pre


class ShuffleNetV1(nn.Module):
  """ShuffleV1: 1x1 stem to 24, stages [4, 8, 4] to [240, 480, 960] with 3 groups, linear."""

  def __init__(self, num_classes: int = 100, out_planes=(240, 480, 960), num_blocks=(4, 8, 4),
               groups: int = 3):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(24)
    cin = 24
    for k, (cout, n) in enumerate(zip(out_planes, num_blocks), start=1):
      # Block 0 concatenates its input, so its branch produces cout - cin channels.
      blocks = [ShuffleV1Block(cin if i == 0 else cout, cout - cin if i == 0 else cout,
                               2 if i == 0 else 1, groups) for i in range(n)]
      setattr(self, f"layer{k}", nn.Sequential(*blocks))
      cin = cout
    self.linear = nn.Linear(out_planes[-1], num_classes)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
    x = F.relu(self.bn1(self.conv1(x)))
    feats, pres = [x], [x]
    for stage in (self.layer1, self.layer2, self.layer3):
      x, pre = _run_stage(stage, x)
      feats.append(x)
      pres.append(pre)
    pooled = F.avg_pool2d(x, 4).flatten(1)
    return self.linear(pooled), {"feats": feats, "preact_feats": pres, "pooled": pooled}


class ShuffleV2Block(nn.Module):
  """Split channels in half; 1x1-dw3x3-1x1 on the second half; concat; shuffle(2)."""

  def __init__(self, ch: int):
    super().__init__()
    half = ch // 2
    self.conv1 = nn.Conv2d(half, half, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(half)
    self.conv2 = _conv(half, half, 3, groups=half)
    self.bn2 = nn.BatchNorm2d(half)
    self.conv3 = nn.Conv2d(half, half, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(half)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = x.shape[1] // 2
    x1, x2 = x[:, :c], x[:, c:]
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2)))))
    y = self.bn3(self.conv3(y))
    out = channel_shuffle(torch.cat([x1, F.relu(y)], 1), 2)
    # Published quirk: the pre-activation tap is the concatenation *before* the shuffle.
    return out, torch.cat([x1, y], 1)


class ShuffleV2Down(nn.Module):
  """Stride-2 unit: left dw3x3-1x1, right 1x1-dw3x3-1x1, concat, shuffle(2)."""

  def __init__(self, cin: int, cout: int):
    super().__init__()
    mid = cout // 2
    self.conv1 = _conv(cin, cin, 3, 2, groups=cin)
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv2 = nn.Conv2d(cin, mid, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(mid)
    self.conv3 = nn.Conv2d(cin, mid, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(mid)
    self.conv4 = _conv(mid, mid, 3, 2, groups=mid)
    self.bn4 = nn.BatchNorm2d(mid)
    self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
    self.bn5 = nn.BatchNorm2d(mid)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
    right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
    right = F.relu(self.bn5(self.conv5(right)))
    return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
  """ShuffleV2 (net_size 1): 1x1 stem, 3 stages of DownBlock + n BasicBlocks, conv2 to 1024."""

  def __init__(self, num_classes: int = 100, out_channels=(116, 232, 464, 1024), num_blocks=(3, 7, 3)):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(24)
    cin = 24
    for k, (cout, n) in enumerate(zip(out_channels[:3], num_blocks), start=1):
      setattr(self, f"layer{k}", nn.Sequential(ShuffleV2Down(cin, cout),
                                               *[ShuffleV2Block(cout) for _ in range(n)]))
      cin = cout
    self.conv2 = nn.Conv2d(cin, out_channels[3], 1, bias=False)
    self.bn2 = nn.BatchNorm2d(out_channels[3])
    self.linear = nn.Linear(out_channels[3], num_classes)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
    x = F.relu(self.bn1(self.conv1(x)))
    feats, pres = [x], [x]
    for stage in (self.layer1, self.layer2, self.layer3):
      x = stage[0](x)
      x, pre = _run_stage(stage[1:], x)
      feats.append(x)
      pres.append(pre)
    pooled = F.avg_pool2d(F.relu(self.bn2(self.conv2(x))), 4).flatten(1)
    return self.linear(pooled), {"feats": feats, "preact_feats": pres, "pooled": pooled}


# ---------------------------------------------------------------------------------------------
# ResNet50 for CIFAR (resnetv2.py)


class Bottleneck(nn.Module):
  """1x1-3x3(stride)-1x1 (x4) with a `shortcut` Sequential (empty when identity)."""

  def __init__(self, cin: int, planes: int, stride: int):
    super().__init__()
    cout = 4 * planes
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv(planes, planes, 3, stride)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(cout)
    self.shortcut = nn.Sequential()
    if stride != 1 or cin != cout:
      self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                    nn.BatchNorm2d(cout))

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    pre = self.bn3(self.conv3(y)) + self.shortcut(x)
    return F.relu(pre), pre


class ResNetV2(nn.Module):
  """CIFAR ResNet-50: 3x3 stem (64), Bottleneck stages [3, 4, 6, 3], global pool, linear."""

  def __init__(self, num_blocks=(3, 4, 6, 3), num_classes: int = 100):
    super().__init__()
    self.conv1 = _conv(3, 64, 3)
    self.bn1 = nn.BatchNorm2d(64)
    cin = 64
    for k, (planes, n, stride) in enumerate(zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)), start=1):
      blocks = []
      for i in range(n):
        blocks.append(Bottleneck(cin, planes, stride if i == 0 else 1))
        cin = 4 * planes
      setattr(self, f"layer{k}", nn.Sequential(*blocks))
    self.linear = nn.Linear(cin, num_classes)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Features]:
    x = F.relu(self.bn1(self.conv1(x)))
    feats, pres = [x], [x]
    for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
      x, pre = _run_stage(stage, x)
      feats.append(x)
      pres.append(pre)
    pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return self.linear(pooled), {"feats": feats, "preact_feats": pres, "pooled": pooled}


# ---------------------------------------------------------------------------------------------

_SMALL = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def _resnet(depth: int, widths: tuple[int, int, int, int]) -> Callable[..., nn.Module]:
  return lambda num_classes=100: CifarResNet(depth, widths, num_classes)


def _wrn(depth: int, widen: int) -> Callable[..., nn.Module]:
  return lambda num_classes=100: WideResNet(depth, widen, num_classes)


def _vgg(name: str) -> Callable[..., nn.Module]:
  return lambda num_classes=100: VGG(_VGG_CFG[name], num_classes)


MODELS: dict[str, Callable[..., nn.Module]] = {
    **{f"resnet{d}": _resnet(d, _SMALL) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _resnet(8, _WIDE),
    "resnet32x4": _resnet(32, _WIDE),
    **{f"wrn_{d}_{k}": _wrn(d, k) for d in (16, 40) for k in (1, 2)},
    **{name: _vgg(name) for name in _VGG_CFG},
    "MobileNetV2": lambda num_classes=100: MobileNetV2(6, 0.5, num_classes),
    "ShuffleV1": lambda num_classes=100: ShuffleNetV1(num_classes),
    "ShuffleV2": lambda num_classes=100: ShuffleNetV2(num_classes),
    "ResNet50": lambda num_classes=100: ResNetV2((3, 4, 6, 3), num_classes),
}
