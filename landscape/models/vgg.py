"""VGG-9 of Li et al. 2018 (the reference loss-landscape code's `vgg9`).

Seven 3x3 conv-BN-ReLU layers, 64, 64, M, 128, 128, M, 256, 256, 256, M (M = 2x2
max-pool, ceil mode), then `fc` = Linear(256*4*4 -> 256), BN, ReLU, and
`classifier` = Linear(256 -> num_classes): 9 weight layers, 2.79M parameters for 10
classes. Convs keep their bias; state-dict keys (`features.{i}`, `fc.0`, `fc.1`,
`classifier`) follow the reference, so its checkpoints load.

Sized for 32x32 inputs, where the last feature map is 4x4. Other sizes are
average-pooled to 4x4 before `fc` (a no-op at 32x32), so 8x8 digits run too.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from landscape.models.registry import register_model

VGG9_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M")


class VGG(nn.Module):
    """A VGG of conv-BN-ReLU layers and max-pools (`cfg`), then one hidden FC layer."""

    def __init__(
        self, cfg: tuple[int | str, ...] = VGG9_CFG, num_classes: int = 10, in_channels: int = 3
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            elif isinstance(v, int):
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                channels = v
            else:
                raise ValueError(f"cfg entries must be a channel count or 'M', got {v!r}")
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Linear(channels * 4 * 4, channels), nn.BatchNorm1d(channels), nn.ReLU()
        )
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)  # (N, 256, 4, 4) for 32x32 inputs
        out = F.adaptive_avg_pool2d(out, 4).flatten(1)  # (N, 256*16)
        return self.classifier(self.fc(out))


@register_model
def vgg9(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-9 with batch norm, as in Li et al. 2018 (the reference has no BN-free VGG-9)."""
    return VGG(VGG9_CFG, num_classes, in_channels)
