"""The one surgery every pruning method shares: methods choose channels, groups couple them, this cuts them.

A cut keeps, in every group it names, the listed channels in every tensor of the group (the producers' filters and
biases, the BatchNorm entries, the consumers' input weights) through Torch-Pruning's dependency graph, so the result is
an ordinary, smaller nn.Module of the same class with the same output shape. Weight combination (SCP, k-means) first
folds a removed channel's input weights into its kept twin's in every consumer of the group.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunedroid.errors import PrunedroidError
from prunedroid.pruning.groups import ChannelGroup, channel_groups, dependency_graph


@dataclass(frozen=True)
class Merge:
    """Channel `removed` of a group goes, and whatever consumed it now reads `factor` x channel `kept` instead:
    the consumers' input weights of `removed`, scaled by `factor`, are added to those of `kept` (weight combination;
    right when the removed map is close to `factor` times the kept one)."""

    removed: int
    kept: int
    factor: float


def consumer_weight(weight: torch.Tensor, repeat: int) -> torch.Tensor:
    """A consumer's weight as (out, channels, ...) over the group's channels: a conv's as it is, a Linear reading
    `repeat` features per channel (channel-major, as flatten lays them out) as (out, channels, repeat)."""
    return weight if weight.dim() == 4 else weight.reshape(weight.shape[0], -1, repeat)


def fold_channels(state_dict: dict[str, torch.Tensor], group: ChannelGroup, merges: Sequence[Merge]) -> None:
    """Weight combination, in place on `state_dict`: adds each removed channel's consumer weights, times its factor,
    to its kept twin's, in every consumer of the group. Cutting the removed channels is left to `prune_channels`."""
    if {m.kept for m in merges} & {m.removed for m in merges}:
        raise PrunedroidError(f"group {group.index}: a channel cannot be both kept (merged into) and removed")
    for consumer in group.consumers:
        key = f"{consumer.module}.weight"
        weight = state_dict[key].clone()
        view = consumer_weight(weight, consumer.repeat)
        for merge in merges:
            view.select(1, merge.kept).add_(view.select(1, merge.removed), alpha=merge.factor)
        state_dict[key] = weight


def check_keep(groups: Sequence[ChannelGroup], keep: Mapping[int, Sequence[int]]) -> None:
    for index, channels in keep.items():
        if not 0 <= index < len(groups):
            raise PrunedroidError(f"group {index} is not prunable (prunable: 0..{len(groups) - 1})")
        count = groups[index].channels
        if not channels:
            raise PrunedroidError(f"group {index} would keep no channels; every group keeps at least one")
        if len(set(channels)) != len(channels) or min(channels) < 0 or max(channels) >= count:
            raise PrunedroidError(f"group {index}: kept channels must be distinct indices in 0..{count - 1}")


def prune_channels(model: nn.Module, example_input: torch.Tensor, keep: Mapping[int, Sequence[int]],
                   state_dict: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """A smaller copy of `model` keeping only the `keep[group]` channels of each listed group (indices into
    channel_graph(model, example_input).groups; others untouched), in the same train/eval mode.

    state_dict: the weights to cut, when a method has edited them (weight combination); default the model's own."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model)
    if state_dict is not None:
        pruned.load_state_dict(state_dict)
    graph = dependency_graph(pruned, example_input)
    groups = channel_groups(pruned, graph)
    check_keep(groups, keep)
    for index, kept in sorted(keep.items()):
        group = groups[index]
        removed = sorted(set(range(group.channels)) - set(kept))
        if removed:
            leader = pruned.get_submodule(group.leader)
            graph.get_pruning_group(leader, tp.prune_conv_out_channels, idxs=removed).prune()
    return pruned.train(model.training)
