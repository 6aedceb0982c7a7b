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
from prunedroid.pruning.groups import ChannelGroup, Consumer, channel_groups, dependency_graph


@dataclass(frozen=True)
class Merge:
    """Channel `removed` of a group goes, and whatever consumed it now reads `factor` x channel `kept` instead:
    the consumers' input weights of `removed`, scaled by `factor`, are added to those of `kept` (weight combination;
    right when the removed map is close to `factor` times the kept one)."""

    removed: int
    kept: int
    factor: float


def consumer_weight(weight: torch.Tensor, consumer: Consumer, channels: int) -> torch.Tensor:
    """The part of a consumer's weight that reads the group's `channels` channels, as (out, channels, ...): a
    conv's input channels from consumer.offset, a Linear's features as (out, channels, repeat) (channel-major, as
    flatten lays them out). A view: writing it writes `weight`."""
    view = weight if weight.dim() == 4 else weight.reshape(weight.shape[0], -1, consumer.repeat)
    return view[:, consumer.channels(channels)]


def fold_channels(state_dict: dict[str, torch.Tensor], group: ChannelGroup, merges: Sequence[Merge]) -> None:
    """Weight combination, in place on `state_dict`: adds each removed channel's consumer weights, times its factor,
    to its kept twin's, in every consumer of the group. Cutting the removed channels is left to `prune_channels`."""
    if {m.kept for m in merges} & {m.removed for m in merges}:
        raise PrunedroidError(f"group {group.index}: a channel cannot be both kept (merged into) and removed")
    for consumer in group.consumers:
        key = f"{consumer.module}.weight"
        weight = state_dict[key].clone()
        view = consumer_weight(weight, consumer, group.channels)
        for merge in merges:
            view.select(1, merge.kept).add_(view.select(1, merge.removed), alpha=merge.factor)
        state_dict[key] = weight


def check_keep(groups: Sequence[ChannelGroup], keep: Mapping[int, Sequence[int]]) -> None:
    for index, channels in keep.items():
        if not 0 <= index < len(groups):
            raise PrunedroidError(f"group {index} is not prunable (prunable: 0..{len(groups) - 1})")
        _check_kept(groups[index], channels)


def _check_kept(group: ChannelGroup, channels: Sequence[int]) -> None:
    if not channels:
        raise PrunedroidError(f"group {group.index} would keep no channels; every group keeps at least one")
    if len(set(channels)) != len(channels) or min(channels) < 0 or max(channels) >= group.channels:
        raise PrunedroidError(f"group {group.index}: kept channels must be distinct indices in "
                              f"0..{group.channels - 1}")


class Cutter:
    """A copy of a model and its dependency graph, cut group by group in place (SCP and k-means cut each group after
    choosing on the network cut before it): one trace for the model, not one per group, which on a network of a
    hundred groups is most of the time a cut takes. `model` is the copy, in eval mode."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor,
                 state_dict: Mapping[str, torch.Tensor] | None = None) -> None:
        self.model = copy.deepcopy(model).eval()
        if state_dict is not None:
            self.model.load_state_dict(state_dict)
        self.dependencies = dependency_graph(self.model, example_input)

    def cut(self, group: ChannelGroup, kept: Sequence[int],
            state_dict: Mapping[str, torch.Tensor] | None = None) -> None:
        """Keeps only the `kept` channels of `group` (a group of the model as it was before any cut; its own channels
        still all there), after loading `state_dict` (the weights a fold edited) into the copy."""
        import torch_pruning as tp

        _check_kept(group, kept)
        if state_dict is not None:
            self.model.load_state_dict(state_dict)  # copied into the same parameters: the graph still knows them
        removed = sorted(set(range(group.channels)) - set(kept))
        if removed:
            leader = self.model.get_submodule(group.leader)
            self.dependencies.get_pruning_group(leader, tp.prune_conv_out_channels, idxs=removed).prune()


def prune_channels(model: nn.Module, example_input: torch.Tensor, keep: Mapping[int, Sequence[int]],
                   state_dict: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """A smaller copy of `model` keeping only the `keep[group]` channels of each listed group (indices into
    channel_graph(model, example_input).groups; others untouched), in the same train/eval mode.

    state_dict: the weights to cut, when a method has edited them (weight combination); default the model's own."""
    cutter = Cutter(model, example_input, state_dict)
    groups = channel_groups(cutter.model, cutter.dependencies)
    check_keep(groups, keep)
    for index, kept in sorted(keep.items()):
        cutter.cut(groups[index], kept)
    return cutter.model.train(model.training)
