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
import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import data as cifar
from pipeline.errors import PipelineError
from pipeline.options import check
from pipeline.prune.budget import Budget, required_budget

IMPORTANCES = ("magnitude", "taylor")


@dataclass(frozen=True)
class LibraryConfig:
    """importance: magnitude or taylor; eval_images / batch_size: the labelled images Taylor's gradients come from."""

    name: ClassVar[str] = "torch-pruning"
    importance: str = "magnitude"
    eval_images: int = 1024
    batch_size: int = 256

    def __post_init__(self) -> None:
        check([(self.importance in IMPORTANCES, f"unknown importance {self.importance!r}; choose one of "
                                                f"{', '.join(IMPORTANCES)}"),
               (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
               (self.eval_images >= 1, f"evaluation images must be >= 1, got {self.eval_images}")], "torch-pruning")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def data_images(self) -> int:
        return self.eval_images if self.importance == "taylor" else 0

    def resolve_budget(self, budget: Budget | None, default: Budget | None) -> Budget:
        return required_budget(self.name, budget, default)


def library_scores(model: nn.Module, config: LibraryConfig, evaluation: cifar.Split | None) -> list[torch.Tensor]:
    """Per conv layer, (out_channels,) importance scores from Torch-Pruning; higher means keep."""
    import torch_pruning as tp

    if config.importance == "taylor" and evaluation is None:
        raise PipelineError("Taylor importance needs labelled evaluation images (held-out training images)")
    scored = copy.deepcopy(model).eval()  # gradients are written into it; the caller's model stays untouched
    graph = tp.DependencyGraph().build_dependency(scored, example_inputs=torch.zeros(1, *cifar.IMAGE_SHAPE))
    if config.importance == "taylor":
        importance = tp.importance.GroupTaylorImportance()
        scored.zero_grad()
        for start in range(0, len(evaluation), config.batch_size):
            batch = evaluation.images[start:start + config.batch_size]
            labels = evaluation.labels[start:start + config.batch_size]
            # Summed, so every image weighs the same whatever the batch size.
            F.cross_entropy(scored(cifar.normalize(batch)), labels, reduction="sum").backward()
    else:
        importance = tp.importance.GroupMagnitudeImportance(p=2)
    scores = []
    for conv in (m for m in scored.modules() if isinstance(m, nn.Conv2d)):
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
        with torch.no_grad():
            scores.append(importance(group).detach().clone())
    return scores
