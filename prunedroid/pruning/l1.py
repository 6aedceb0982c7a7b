"""L1-norm filter pruning (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017): a filter whose weights
sum to little in absolute value contributes little, so the smallest go first. A group's channel is made by every
producer of the group (a residual addition sums several), so its score is the sum of their filters' L1 norms."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from prunedroid.pruning.groups import ChannelGraph, ChannelGroup, conv_named
from prunedroid.pruning.method import Calibration, PruningMethod


def filter_l1(conv: nn.Conv2d) -> torch.Tensor:
    """(out_channels,) sums of absolute filter weights."""
    return conv.weight.detach().abs().sum(dim=(1, 2, 3))


def group_l1(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """(channels,) the group's producers' filter_l1, summed."""
    return torch.stack([filter_l1(conv_named(model, name)) for name in group.producers]).sum(0)


def l1_scores(model: nn.Module, graph: ChannelGraph) -> list[torch.Tensor]:
    """Per group, group_l1."""
    return [group_l1(model, group) for group in graph.groups]


@dataclass(frozen=True)
class L1Config(PruningMethod):
    """No options: the smallest filters go."""

    name: ClassVar[str] = "l1"
    summary: ClassVar[str] = "the smallest filter L1 norms go first, Li et al. 2017"

    def scores(self, model: nn.Module, graph: ChannelGraph, example_input: torch.Tensor, seed: int,
               calibration: Calibration | None) -> list[torch.Tensor]:
        return l1_scores(model, graph)
