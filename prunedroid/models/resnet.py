"""ResNet-56 for CIFAR-10 (He et al. 2016, section 4.2): a 3x3 stem, three stages of nine basic blocks at 16, 32 and
64 channels (times the width), global average pooling and one Linear. A stage's first block halves the map and widens
it through a 1x1 conv + BN shortcut (He et al.'s option B, as Torch-Pruning's and HRank's CIFAR ResNet-56 are built),
so every residual addition ties real channels that a pruner can keep or cut together.

Input (N, 3, 32, 32) normalised images; output (N, num_classes) logits.
"""
from __future__ import annotations

import torch
from torch import nn

from prunedroid.models.registry import ModelEntry, register_model

STAGE_CHANNELS = (16, 32, 64)
BLOCKS_PER_STAGE = 9  # 6n + 2 layers with n = 9: ResNet-56


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, -> ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 10, blocks: int = BLOCKS_PER_STAGE) -> None:
        super().__init__()
        channels = [scaled(c, width) for c in STAGE_CHANNELS]
        self.conv1 = nn.Conv2d(3, channels[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)
        stages, in_channels = [], channels[0]
        for stage, out_channels in enumerate(channels):
            layers = []
            for block in range(blocks):
                layers.append(BasicBlock(in_channels, out_channels, 2 if stage and not block else 1))
                in_channels = out_channels
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


# quick: about 30 minutes on 2 CPU cores: 12 epochs of ~113 s where nothing else ran
# (benchmarks/results/training_resnet56_quick.md).
register_model(ModelEntry("resnet56", "ResNet-56", ResNetCifar, "16..64 channels",
                          presets={"quick": {"width": 0.5, "epochs": 12}}))
