"""CIFAR ResNets of He et al. 2016 (Sec. 4.2), with and without skip connections.

6n+2 layers: a 3x3 conv (16 channels), three stages of n basic blocks with widths
16/32/64 (the 2nd and 3rd start with stride 2), global average pooling, a linear
layer. The paper's parameter counts (Table 6), which `tests/test_models.py` holds:

    depth    20     32     44     56     110
    params   0.27M  0.46M  0.66M  0.85M  1.7M

`shortcut` selects the skip connection where a block changes shape:
- "A": parameter-free, the paper's CIFAR choice; the identity is subsampled and
  zero-padded on channels. The akamaster/pytorch_resnet_cifar10 checkpoints load
  into these (after stripping `module.`).
- "B": 1x1 conv + BN projection (keys `shortcut.0`, `shortcut.1`), as in the
  reference loss-landscape code's `resnet56` etc.
- "none": no skip connection at all, Li et al.'s `*_noshort` networks; same
  parameters as "A".

Registered names: `resnet{d}` (A), `resnet{d}_b` (B), `resnet{d}_noshort` (none)
for d in 20, 32, 44, 56, 110. Any input size works (global pooling is adaptive),
so 8x8 digit images do too.
"""

from __future__ import annotations

from functools import partial
from typing import Literal, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F

from landscape.models.registry import register_model

Shortcut = Literal["A", "B", "none"]
SHORTCUTS: tuple[str, ...] = get_args(Shortcut)
DEPTHS = (20, 32, 44, 56, 110)


def check_shortcut(shortcut: str) -> None:
    """Raise ValueError unless `shortcut` is one of SHORTCUTS."""
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")


class PadShortcut(nn.Module):
    """Option A: subsample by `stride` and zero-pad the channels evenly on both sides."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad = (planes - in_planes) // 2  # planes//4 when the width doubles

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))  # (N, C + 2*pad, H', W')


def make_shortcut(in_planes: int, planes: int, stride: int, shortcut: str) -> nn.Module | None:
    """The skip path of a block: identity, option A or B where the shape changes, or None."""
    check_shortcut(shortcut)
    if shortcut == "none":
        return None
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    if shortcut == "A":
        return PadShortcut(in_planes, planes, stride)
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers; the skip path (if any) is added before the last ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: Shortcut = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = make_shortcut(in_planes, planes, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


def make_stage(
    block: type[nn.Module], in_planes: int, planes: int, n: int, stride: int, shortcut: str
) -> nn.Sequential:
    """`n` blocks; only the first one changes the shape (stride, width)."""
    out_planes = planes * getattr(block, "expansion", 1)
    rest = (block(out_planes, planes, 1, shortcut) for _ in range(n - 1))
    return nn.Sequential(block(in_planes, planes, stride, shortcut), *rest)


class CifarResNet(nn.Module):
    """ResNet-`depth` for CIFAR; `depth` = 6n+2 with n >= 1 blocks per stage."""

    def __init__(
        self, depth: int, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "A"
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (e.g. {DEPTHS}), got {depth!r}")
        check_shortcut(shortcut)
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = make_stage(BasicBlock, 16, 16, n, 1, shortcut)
        self.layer2 = make_stage(BasicBlock, 16, 32, n, 2, shortcut)
        self.layer3 = make_stage(BasicBlock, 32, 64, n, 2, shortcut)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (N, 16, H, W)
        out = self.layer3(self.layer2(self.layer1(out)))  # (N, 64, H/4, W/4)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (N, 64)
        return self.linear(out)


def _register_all() -> None:
    for depth in DEPTHS:
        for shortcut, suffix in (("A", ""), ("B", "_b"), ("none", "_noshort")):
            factory = partial(CifarResNet, depth, shortcut=shortcut)
            register_model(factory, name=f"resnet{depth}{suffix}")


_register_all()
