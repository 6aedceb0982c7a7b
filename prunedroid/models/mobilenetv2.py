"""MobileNetV2 for CIFAR-10 (Sandler et al. 2018, with the usual 32x32 changes: a stride-1 stem and a stride-1 second
stage, so the map reaches 4x4 before pooling instead of 1x1). Inverted residual blocks: a 1x1 expansion (x6), a 3x3
depthwise conv and a linear 1x1 projection, with a residual addition where a block keeps its shape. Channel counts
are scaled by the width and rounded to multiples of 8, as the paper's width multiplier is.

Input (N, 3, 32, 32) normalised images; output (N, num_classes) logits.
"""
from __future__ import annotations

import torch
from torch import nn

from prunedroid.models.registry import ModelEntry, register_model

# (expansion, output channels, blocks, stride of the first block) per stage
STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STEM, LAST = 32, 1280


def divisible(channels: float, by: int = 8) -> int:
    """`channels` rounded to the nearest multiple of `by` (at least `by`), never more than 10% below it."""
    rounded = max(by, int(channels + by / 2) // by * by)
    return rounded + by if rounded < 0.9 * channels else rounded


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
            activation: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups,
                                         bias=False), nn.BatchNorm2d(out_channels)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if activation else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers = [conv_bn(in_channels, hidden, 1)] if expansion != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   conv_bn(hidden, out_channels, 1, activation=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2Cifar(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 10) -> None:
        super().__init__()
        in_channels = divisible(STEM * width)
        layers: list[nn.Module] = [conv_bn(3, in_channels, 3)]
        for expansion, channels, blocks, stride in STAGES:
            out_channels = divisible(channels * width)
            for block in range(blocks):
                layers.append(InvertedResidual(in_channels, out_channels, stride if block == 0 else 1, expansion))
                in_channels = out_channels
        last = divisible(LAST * max(1.0, width))  # as the paper: the last conv is not narrowed below 1280
        layers.append(conv_bn(in_channels, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# quick: about 30 minutes on 2 CPU cores: 7 epochs of ~210-230 s where nothing else ran
# (benchmarks/results/training_mobilenetv2_quick.md).
register_model(ModelEntry("mobilenetv2", "MobileNetV2", MobileNetV2Cifar, "32..320 channels",
                          presets={"quick": {"width": 0.5, "epochs": 7}}))
