"""Channel importance from Torch-Pruning (Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023), the
field's well-kept structural-pruning library: its dependency graph gathers every tensor coupled to a conv's output
channels (the filters, the BatchNorm entries, the next layer's input weights) and its criteria score the whole group.
Only the scores are taken from it; the budget decides how many channels go and our one surgery cuts them, so these
criteria are cut exactly like every other method.

importance "magnitude": the L2 norm of each channel's group (GroupMagnitudeImportance, p=2).
importance "taylor": first-order Taylor estimate of the loss change when the channel's group is zeroed,
|w * dL/dw| summed over the group (GroupTaylorImportance), with gradients of the cross-entropy on labelled held-out
training images.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from prunedroid.errors import PrunedroidError
from prunedroid.options import check, option
from prunedroid.pruning.groups import ChannelGraph, dependency_graph
from prunedroid.pruning.method import Calibration, PruningMethod, labelled_batches

IMPORTANCES = ("magnitude", "taylor")


@dataclass(frozen=True)
class TorchPruningConfig(PruningMethod):
    """Torch-Pruning's group criteria (see the module docstring)."""

    name: ClassVar[str] = "torch-pruning"
    summary: ClassVar[str] = "Torch-Pruning's group importance, Fang et al. 2023"
    importance: str = option("magnitude", "the library's group criterion: magnitude (L2 norm) or taylor "
                                          "(|w * grad|)")
    eval_images: int = option(1024, "labelled held-out training images Taylor's gradients come from")
    batch_size: int = option(256, "images per forward and backward pass")

    def __post_init__(self) -> None:
        check([(self.importance in IMPORTANCES, f"unknown importance {self.importance!r}; choose one of "
                                                f"{', '.join(IMPORTANCES)}"),
               (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
               (self.eval_images >= 1, f"evaluation images must be >= 1, got {self.eval_images}")], "torch-pruning")

    @property
    def data_images(self) -> int:
        return self.eval_images if self.importance == "taylor" else 0

    def scores(self, model: nn.Module, graph: ChannelGraph, example_input: torch.Tensor, seed: int,
               calibration: Calibration | None) -> list[torch.Tensor]:
        return library_scores(model, graph, example_input, self, labelled_batches(calibration, self.batch_size))


def library_scores(model: nn.Module, graph: ChannelGraph, example_input: torch.Tensor, config: TorchPruningConfig,
                   labelled: Sequence[tuple[torch.Tensor, torch.Tensor]] | None) -> list[torch.Tensor]:
    """Per group, (channels,) importance scores from Torch-Pruning; higher means keep.
    labelled: (inputs, class indices) batches, inputs as the model takes them (Taylor's gradients)."""
    import torch_pruning as tp

    if config.importance == "taylor" and not labelled:
        raise PrunedroidError("Taylor importance needs labelled calibration batches (inputs, class indices)")
    scored = copy.deepcopy(model).eval()  # gradients are written into it; the caller's model stays untouched
    dependencies = dependency_graph(scored, example_input)
    if config.importance == "taylor":
        importance = tp.importance.GroupTaylorImportance()
        scored.zero_grad()
        for inputs, labels in labelled or ():
            # Summed, so every input weighs the same whatever the batch size.
            F.cross_entropy(scored(inputs), labels, reduction="sum").backward()
    else:
        importance = tp.importance.GroupMagnitudeImportance(p=2)
    scores = []
    for group in graph.groups:
        leader = scored.get_submodule(group.leader)
        pruning_group = dependencies.get_pruning_group(leader, tp.prune_conv_out_channels,
                                                       idxs=list(range(group.channels)))
        with torch.no_grad():
            scores.append(importance(pruning_group).detach().clone())
    return scores
