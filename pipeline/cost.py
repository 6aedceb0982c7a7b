"""Multiply-accumulates and parameters: the cost figures every report uses.

MACs count one multiply-add per weight use in Conv2d and Linear layers for one image. BatchNorm, ReLU and pooling
are left out (BatchNorm folds into the conv at export; the others are a rounding error), which is how the pruning
literature reports VGG16 on CIFAR-10 (313M MACs, 15M parameters at full width).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.models import VGGSpec


@dataclass(frozen=True)
class ModelCost:
    macs: int  # per image
    params: int  # every parameter, BatchNorm included

    def to_dict(self) -> dict:
        return {"macs": self.macs, "params": self.params}


def count_cost(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32)) -> ModelCost:
    """Runs one zero image through `model` (in eval mode, restored afterwards) and counts MACs with hooks."""
    macs = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            kernel_h, kernel_w = module.kernel_size
            macs += output.numel() * (module.in_channels // module.groups) * kernel_h * kernel_w
        else:
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


def vgg_macs(spec: VGGSpec, image_size: int = 32) -> int:
    """MACs per image of a VGG from its description alone, without building it (budget searches call this
    thousands of times); equal to count_cost on the built model, which a test checks."""
    macs, size, in_channels = 0, image_size, spec.in_channels
    for index, out_channels in enumerate(spec.conv_channels):
        macs += size * size * out_channels * in_channels * 9
        size = size // 2 if index in spec.pool_after else size
        in_channels = out_channels
    features = in_channels * size * size
    return macs + (features * spec.hidden + spec.hidden * spec.num_classes if spec.hidden
                   else features * spec.num_classes)
