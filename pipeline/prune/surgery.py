"""The one surgery every pruning method shares: methods choose channels, this cuts them.

A model describes its prunable layers as channel couplings: for one layer, every tensor (state-dict key, dim) whose
`dim` runs over that layer's output channels - the filters and BatchNorm entries that produce them, and the weights
of whatever consumes them. Cutting is then index_select on those tensors plus a rebuilt architecture description, so
the result is an ordinary, smaller nn.Module whose checkpoint rebuilds it. Another CNN joins by describing its
couplings and how its spec records channel counts.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.models import VGG, build_model

TensorDim = tuple[str, int]


@dataclass(frozen=True)
class ChannelCoupling:
    """layer: index of the prunable conv; channels: its output channels now.
    producers: tensors indexed by the output channel (conv filters, BatchNorm weight/bias/running stats).
    consumers: tensors indexed by it as an input (next conv's input channels, classifier's input features)."""

    layer: int
    channels: int
    producers: tuple[TensorDim, ...]
    consumers: tuple[TensorDim, ...]

    @property
    def filters(self) -> str:
        """State-dict key of the conv weight (out, in, kh, kw) whose filters make the channels: producers[0]."""
        return self.producers[0][0]


def vgg_couplings(model: VGG) -> list[ChannelCoupling]:
    """One coupling per conv layer of a VGG; the classifier's outputs are never prunable."""
    convs = [(name, module) for name, module in model.features.named_children() if isinstance(module, nn.Conv2d)]
    couplings = []
    for layer, (name, conv) in enumerate(convs):
        bn = f"features.{int(name) + 1}"
        if not isinstance(model.features[int(name) + 1], nn.BatchNorm2d):
            raise PipelineError(f"conv features.{name} is not followed by BatchNorm; cannot couple its channels")
        producers = ((f"features.{name}.weight", 0),
                     *((f"{bn}.{p}", 0) for p in ("weight", "bias", "running_mean", "running_var")))
        # After five 2x2 pools a 32x32 map is 1x1, so flatten maps channel c to classifier input feature c.
        is_last = layer + 1 == len(convs)
        consumer = ("classifier.0.weight", 1) if is_last else (f"features.{convs[layer + 1][0]}.weight", 1)
        couplings.append(ChannelCoupling(layer, conv.out_channels, producers, (consumer,)))
    return couplings


@dataclass(frozen=True)
class Merge:
    """Channel `removed` of a layer goes, and whatever consumed it now reads `factor` x channel `kept` instead:
    the consumers' input weights of `removed`, scaled by `factor`, are added to those of `kept` (weight combination;
    right when the removed map is close to `factor` times the kept one)."""

    removed: int
    kept: int
    factor: float


def fold_channels(state_dict: dict[str, torch.Tensor], coupling: ChannelCoupling, merges: Sequence[Merge]) -> None:
    """Weight combination, in place on `state_dict`: adds each removed channel's consumer weights, times its factor,
    to its kept twin's. Cutting the removed channels is left to `prune_channels`."""
    if {m.kept for m in merges} & {m.removed for m in merges}:
        raise PipelineError(f"layer {coupling.layer}: a channel cannot be both kept (merged into) and removed")
    for key, dim in coupling.consumers:
        weight = state_dict[key].clone()
        for merge in merges:
            weight.select(dim, merge.kept).add_(weight.select(dim, merge.removed), alpha=merge.factor)
        state_dict[key] = weight


def check_keep(couplings: Sequence[ChannelCoupling], keep: Mapping[int, Sequence[int]]) -> None:
    by_layer = {c.layer: c for c in couplings}
    for layer, channels in keep.items():
        if layer not in by_layer:
            raise PipelineError(f"layer {layer} is not prunable (prunable: 0..{len(couplings) - 1})")
        count = by_layer[layer].channels
        if not channels:
            raise PipelineError(f"layer {layer} would keep no channels; every layer keeps at least one")
        if len(set(channels)) != len(channels) or min(channels) < 0 or max(channels) >= count:
            raise PipelineError(f"layer {layer}: kept channels must be distinct indices in 0..{count - 1}")


def prune_channels(model: VGG, keep: Mapping[int, Sequence[int]],
                   state_dict: Mapping[str, torch.Tensor] | None = None) -> VGG:
    """A new, smaller VGG holding only the `keep[layer]` output channels of each listed layer (others untouched).

    state_dict: the weights to cut, when a method has edited them (weight combination); default the model's own.
    """
    couplings = vgg_couplings(model)
    check_keep(couplings, keep)
    state = dict(model.state_dict() if state_dict is None else state_dict)
    for coupling in couplings:
        if coupling.layer not in keep:
            continue
        index = torch.tensor(sorted(keep[coupling.layer]), dtype=torch.long)
        for key, dim in coupling.producers + coupling.consumers:
            state[key] = state[key].index_select(dim, index)
    channels = tuple(len(keep.get(c.layer, range(c.channels))) for c in couplings)
    pruned = build_model(dataclasses.replace(model.spec, conv_channels=channels))
    pruned.load_state_dict(state)
    return pruned.train(model.training)
