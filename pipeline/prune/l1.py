"""L1-norm filter pruning (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017): a filter whose weights
sum to little in absolute value contributes little, so the smallest go first."""
from __future__ import annotations

import torch
from torch import nn


def filter_l1(conv: nn.Conv2d) -> torch.Tensor:
    """(out_channels,) sums of absolute filter weights."""
    return conv.weight.detach().abs().sum(dim=(1, 2, 3))


def l1_scores(model: nn.Module) -> list[torch.Tensor]:
    """Per conv layer, filter_l1."""
    return [filter_l1(m) for m in model.modules() if isinstance(m, nn.Conv2d)]


def random_scores(model: nn.Module, seed: int = 0) -> list[torch.Tensor]:
    """Per conv layer, random scores: the baseline every criterion must beat."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(m.out_channels, generator=generator) for m in model.modules() if isinstance(m, nn.Conv2d)]
