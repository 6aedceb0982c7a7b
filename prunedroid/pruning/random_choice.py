"""Random channel choice: the baseline every criterion must beat."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from prunedroid.pruning.groups import ChannelGraph
from prunedroid.pruning.method import Calibration, PruningMethod


def random_scores(graph: ChannelGraph, seed: int = 0) -> list[torch.Tensor]:
    """Per group, (C,) scores drawn uniformly from a generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(channels, generator=generator) for channels in graph.channels]


@dataclass(frozen=True)
class RandomConfig(PruningMethod):
    """No options: `seed` decides."""

    name: ClassVar[str] = "random"
    summary: ClassVar[str] = "random channels, the baseline"

    def scores(self, model: nn.Module, graph: ChannelGraph, example_input: torch.Tensor, seed: int,
               calibration: Calibration | None) -> list[torch.Tensor]:
        return random_scores(graph, seed)
