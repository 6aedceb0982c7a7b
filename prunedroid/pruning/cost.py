"""Multiply-accumulates and parameters: the cost figures every report uses.

MACs count one multiply-add per weight use in Conv2d and Linear layers for one image. BatchNorm, ReLU and pooling
are left out (BatchNorm folds into the conv at export; the others are a rounding error), which is how the pruning
literature reports VGG16 on CIFAR-10 (313M MACs, 15M parameters at full width).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelCost:
    macs: int  # per image
    params: int  # every parameter, BatchNorm included

    def to_dict(self) -> dict:
        return {"macs": self.macs, "params": self.params}


def count_cost(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32)) -> ModelCost:
    """Runs one zero input of `input_shape` (one sample, no batch dimension) through `model` (in eval mode, restored
    afterwards) and counts MACs with hooks."""
    macs = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            kernel_h, kernel_w = module.kernel_size
            macs += output.numel() * (module.in_channels // module.groups) * kernel_h * kernel_w
        elif isinstance(module, nn.Linear):
            macs += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return ModelCost(macs=macs, params=sum(p.numel() for p in model.parameters()))
