"""A pruning method is one class: a frozen dataclass whose fields are its options (each with its help text in the
field's metadata and its default), registered under its `name` when the class is defined. The command line, its
help and its validation are generated from these fields (prunedroid.options.option_help), so an option is declared
once, here.

A method either scores channels (`scores`: the budget decides how many each group keeps, the scores which; global
allocation ranks them across groups) or, where choosing is more than ranking (SCP's pairs, k-means' clusters),
overrides `cut`. Adding a method is one file with one such class, imported by prunedroid/pruning/__init__.py (or by
the user's own code: registration happens on definition).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, cast

import torch
from torch import nn

from prunedroid.errors import PrunedroidError
from prunedroid.pruning.budget import Budget, keep_top, kept_counts, required_budget
from prunedroid.pruning.groups import ChannelGraph
from prunedroid.pruning.surgery import prune_channels

# Calibration: batches of inputs as the model takes them, or of (inputs, class indices) for methods that need labels.
Calibration = Iterable[torch.Tensor] | Iterable[tuple[torch.Tensor, torch.Tensor]]
REGISTRY: dict[str, type[PruningMethod]] = {}


@dataclass(frozen=True)
class PruningMethod:
    """name: how the method is asked for (method="NAME"; `--method NAME` on the command line); summary: what it
    is, for the help."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            REGISTRY[cls.name] = cls

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def data_images(self) -> int:
        """Labelled held-out inputs the method analyses (0: it looks at weights only)."""
        return 0

    def resolve_budget(self, budget: Budget | None, default: Budget | None) -> Budget | None:
        """The budget this configuration prunes to: the one given, else the caller's default; a method that cannot
        choose counts itself needs one."""
        return required_budget(self.name, budget, default)

    def scores(self, model: nn.Module, graph: ChannelGraph, example_input: torch.Tensor, seed: int,
               calibration: Calibration | None) -> list[torch.Tensor]:
        """Per group, (C,) channel scores, higher means keep."""
        raise PrunedroidError(f"{self.name} chooses channels without scores: it cannot rank them across groups "
                              f"(allocation 'global'); use uniform or sensitivity allocation")

    def cut(self, model: nn.Module, graph: ChannelGraph, example_input: torch.Tensor, budget: Budget | None,
            seed: int, calibration: Calibration | None) -> tuple[nn.Module, list[dict]]:
        """The pruned model and one report row per group: the `budget`'s count of the highest-scoring channels."""
        budget = required_budget(self.name, budget)
        keep = keep_top(self.scores(model, graph, example_input, seed, calibration), kept_counts(graph, budget))
        return prune_channels(model, example_input, keep), [
            {"layer": group.index, "channels_before": group.channels, "channels_after": len(keep[group.index]),
             "kept": keep[group.index]} for group in graph.groups]


def inputs_of(calibration: Calibration | None, method: str) -> torch.Tensor:
    """The calibration inputs as one tensor (n, ...)."""
    batches = [batch[0] if isinstance(batch, (tuple, list)) else cast(torch.Tensor, batch)
               for batch in calibration or ()]
    if not batches:
        raise PrunedroidError(f"{method} compares feature maps: give calibration inputs (held-out data, as the model "
                              f"takes it)")
    return torch.cat(batches)


def labelled_batches(calibration: Calibration | None, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The calibration set as (inputs, class indices) batches of `batch_size` (empty when it has no labels)."""
    given = list(calibration or ())  # read once: calibration may be a generator
    batches = [batch for batch in given if isinstance(batch, (tuple, list)) and len(batch) == 2]
    if not batches or len(batches) != len(given):
        return []
    inputs, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    return [(inputs[start:start + batch_size], labels[start:start + batch_size])
            for start in range(0, len(inputs), batch_size)]


def method_of(method: str | PruningMethod) -> PruningMethod:
    """A registered method's default options from its name, or the options given."""
    if isinstance(method, PruningMethod):
        return method
    if method not in REGISTRY:
        raise PrunedroidError(f"unknown pruning method {method!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[method]()
