"""ResNet-18/34/50 with a CIFAR stem (3x3 conv, stride 1, no max-pool).

The layout and state-dict keys of the kuangliu pytorch-cifar models that the reference
loss-landscape code trains: `conv1`, `bn1`, `layer1..4` (widths 64/128/256/512,
strides 1/2/2/2), projection shortcuts `shortcut.0` (1x1 conv) / `shortcut.1` (BN)
where a block changes shape, global average pooling, `linear`. ResNet-18 has 11.2M
parameters, ResNet-34 21.3M, ResNet-50 23.5M (10 classes).

`shortcut=False` drops every skip connection (Li et al.'s `*_noshort` networks).
Pooling is adaptive, so 8x8 inputs work as well as 32x32.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from landscape.models.cifar_resnet import BasicBlock, make_shortcut, make_stage
from landscape.models.registry import register_model


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand to 4x `planes`; skip path added last."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B"):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = make_shortcut(in_planes, out_planes, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    """A four-stage ResNet of `block`s, `num_blocks[k]` in stage k, on a CIFAR stem."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: tuple[int, int, int, int],
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: bool = True,
    ):
        super().__init__()
        kind = "B" if shortcut else "none"  # projection where the shape changes, else identity
        e = block.expansion
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = make_stage(block, 64, 64, num_blocks[0], 1, kind)
        self.layer2 = make_stage(block, 64 * e, 128, num_blocks[1], 2, kind)
        self.layer3 = make_stage(block, 128 * e, 256, num_blocks[2], 2, kind)
        self.layer4 = make_stage(block, 256 * e, 512, num_blocks[3], 2, kind)
        self.linear = nn.Linear(512 * e, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (N, 64, H, W)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))  # (N, 512e, H/8, W/8)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (N, 512e)
        return self.linear(out)


ARCHS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


def _register_all() -> None:
    for depth, (block, num_blocks) in ARCHS.items():
        for shortcut, suffix in ((True, ""), (False, "_noshort")):
            factory = partial(ResNet, block, num_blocks, shortcut=shortcut)
            register_model(factory, name=f"resnet{depth}{suffix}")


_register_all()
