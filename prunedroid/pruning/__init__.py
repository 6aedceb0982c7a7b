"""Channel pruning of any traced CNN: a method scores or picks channels, a budget says how many go, channel groups
couple what must be cut together, one surgery cuts them.

This package is the library: it imports torch, numpy and the libraries its methods build on (scikit-learn's k-means,
Torch-Pruning's dependency graph and criteria), never the project's training, export, measurement or app layers.
What it needs from them - how to evaluate a model, how long a layer takes - is passed in as functions.

    result = prune(model, example_input, "l1", mac_reduction=0.5)
    result.model     # a smaller copy of `model`, same class, same output shape
    result.report    # channels per group, MACs and parameters before and after

A method is the name of a scorer ("l1", "random") or a method's options (SCPConfig, KMeansConfig, LibraryConfig).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from prunedroid.errors import PrunedroidError
from prunedroid.options import with_options
from prunedroid.pruning.allocation import Curve, PredictMs, allocate, layer_sensitivity
from prunedroid.pruning.budget import Budget, keep_top, kept_counts, required_budget
from prunedroid.pruning.cost import ModelCost, count_cost
from prunedroid.pruning.groups import ChannelGraph, ChannelGroup, channel_graph
from prunedroid.pruning.kmeans import KMeansConfig, distinct_scores, prune_kmeans
from prunedroid.pruning.l1 import l1_scores, random_scores
from prunedroid.pruning.library import LibraryConfig, library_scores
from prunedroid.pruning.scp import SCPConfig, prune_scp, redundancy_scores
from prunedroid.pruning.surgery import prune_channels

# Methods that rank channels by a score: the budget decides how many each group keeps, the score which.
SCORERS: dict[str, Callable[[nn.Module, ChannelGraph, int], list[torch.Tensor]]] = {
    "l1": lambda model, graph, seed: l1_scores(model, graph),
    "random": lambda model, graph, seed: random_scores(graph, seed),
}
# Methods with options of their own: each option dataclass validates itself and says which budget it prunes to.
CONFIGS = {config.name: config for config in (SCPConfig, KMeansConfig, LibraryConfig)}
METHODS = (*SCORERS, *CONFIGS)
Method = str | SCPConfig | KMeansConfig | LibraryConfig
# Calibration: batches of inputs as the model takes them, or of (inputs, class indices) for methods that need labels.
Calibration = Iterable[torch.Tensor] | Iterable[tuple[torch.Tensor, torch.Tensor]]
BUDGET_FIELDS = tuple(field.name for field in dataclasses.fields(Budget))


def method_name(method: Method) -> str:
    return method if isinstance(method, str) else method.name


def method_options(method: Method) -> dict:
    return {} if isinstance(method, str) else method.to_dict()


def resolve_method(name: str, options: dict[str, str | int | float | bool | None], budget: Budget | None,
                   default_budget: Budget | None = None) -> tuple[Method, Budget | None]:
    """The method and the budget it prunes to, from option values (None: not given). An option that belongs
    to another method, or a budget the method's options rule out, is an error naming the fix."""
    if name not in METHODS:
        raise PrunedroidError(f"unknown pruning method {name!r}; choose one of {', '.join(METHODS)}")
    given = {key: value for key, value in options.items() if value is not None}
    own = {field.name for field in dataclasses.fields(CONFIGS[name])} if name in CONFIGS else set()
    foreign = [key for key in given if key not in own]
    if foreign:
        owners = lambda key: "/".join(m for m, c in CONFIGS.items() if key in {f.name for f in dataclasses.fields(c)})
        raise PrunedroidError("; ".join(f"--{key.replace('_', '-')} applies to --method {owners(key) or 'none'} only"
                                        for key in foreign) + f", not to --method {name}")
    if name in SCORERS:
        return name, required_budget(name, budget, default_budget)
    config = with_options(CONFIGS[name](), given, name)
    return config, config.resolve_budget(budget, default_budget)


def _inputs(calibration: Calibration | None, method: str) -> torch.Tensor:
    """The calibration inputs as one tensor (n, ...)."""
    batches = [batch[0] if isinstance(batch, (tuple, list)) else batch for batch in calibration or ()]
    if not batches:
        raise PrunedroidError(f"{method} compares feature maps: give calibration inputs (held-out data, as the model "
                              f"takes it)")
    return torch.cat(batches)


def _labelled(calibration: Calibration | None, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The calibration set as (inputs, class indices) batches of `batch_size`."""
    batches = list(calibration or ())
    if not batches or not all(isinstance(b, (tuple, list)) and len(b) == 2 for b in batches):
        return []
    inputs, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    return [(inputs[start:start + batch_size], labels[start:start + batch_size])
            for start in range(0, len(inputs), batch_size)]


def channel_scores(model: nn.Module, graph: ChannelGraph, example_input: torch.Tensor, method: Method,
                   seed: int = 0, calibration: Calibration | None = None) -> list[torch.Tensor]:
    """Per group, (C,) the method's own channel scores, higher means keep: what global allocation ranks across
    groups. Scorers give theirs; SCP one minus a channel's highest similarity in its group; k-means a filter's
    distance to its nearest neighbour; Torch-Pruning its criterion."""
    if isinstance(method, SCPConfig):
        return redundancy_scores(model, graph, method, _inputs(calibration, "SCP"))
    if isinstance(method, KMeansConfig):
        return distinct_scores(model, graph, method)
    if isinstance(method, LibraryConfig):
        return library_scores(model, graph, example_input, method, _labelled(calibration, method.batch_size))
    return SCORERS[method](model, graph, seed)


def cut(model: nn.Module, graph: ChannelGraph, example_input: torch.Tensor, method: Method, budget: Budget | None,
        seed: int = 0, calibration: Calibration | None = None) -> tuple[nn.Module, list[dict]]:
    """The method choosing which channels go, `budget` saying how many per group; the pruned model and one report
    row per group."""
    if isinstance(method, SCPConfig):
        return prune_scp(model, graph, example_input, method, budget, _inputs(calibration, "SCP"))
    if isinstance(method, KMeansConfig):
        return prune_kmeans(model, graph, example_input, method, budget, seed)
    if isinstance(method, LibraryConfig) or method in SCORERS:
        budget = required_budget(method_name(method), budget)
        keep = keep_top(channel_scores(model, graph, example_input, method, seed, calibration),
                        kept_counts(graph, budget))
        return prune_channels(model, example_input, keep), [
            {"layer": group.index, "channels_before": group.channels, "channels_after": len(keep[group.index]),
             "kept": keep[group.index]} for group in graph.groups]
    raise PrunedroidError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")


@dataclass
class PruneResult:
    """model: the pruned copy; report: what was cut and what it cost (see `prune`)."""

    model: nn.Module
    report: dict


def prune(model: nn.Module, example_input: torch.Tensor, method: Method = "l1", budget: Budget | None = None, *,
          calibration: Calibration | None = None, seed: int = 0,
          evaluate: Callable[[nn.Module], float] | None = None, predict_ms: PredictMs | None = None,
          remember_curves: Callable[[str, Callable[[], list[Curve]]], list[Curve]] | None = None,
          **options: object) -> PruneResult:
    """Prunes whole channels of `model` (any nn.Module of Conv2d, Linear, BatchNorm and parameter-free operations;
    left untouched) and returns a smaller copy with the same output shape.

    example_input: an input the model accepts, e.g. torch.zeros(1, 3, 32, 32): traced to find the channel groups.
    method: "l1", "random", "scp", "kmeans", "torch-pruning", or a method's options (SCPConfig, ...); a method named
    by string takes its options as keywords (criterion="cosine").
    budget, or its fields as keywords: mac_reduction=0.5 (fraction of MACs removed), ratio, layer_ratios,
    latency_reduction, round_to, allocation ("uniform", "global", "sensitivity", "latency"), min_keep, tolerance.
    calibration: batches of inputs, already normalised as the model takes them (SCP's feature maps), or of
    (inputs, class indices) (Torch-Pruning's Taylor criterion); weights-only methods need none.
    evaluate: model -> accuracy in percent on held-out data (allocation "sensitivity" and "latency").
    predict_ms: channels per group -> predicted batch-1 latency in ms (allocation "latency").
    remember_curves: (key, measure) -> sensitivity curves, to keep measured curves between calls (a cache).

    The report: method, options, budget, seed, per group ("layers") channels before/after and the kept indices, the
    allocation's measurements, MACs and parameters before/after and their reductions, the groups' producers."""
    budget_options = {key: options.pop(key) for key in list(options) if key in BUDGET_FIELDS}
    if budget_options:
        if budget is not None:
            raise PrunedroidError(f"give a Budget or its fields ({', '.join(budget_options)}), not both")
        budget = Budget(**{key: tuple(value) if isinstance(value, list) else value  # type: ignore[misc]
                           for key, value in budget_options.items()})
    if isinstance(method, str) and method not in METHODS:
        raise PrunedroidError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    if isinstance(method, str) and method in CONFIGS:
        known = {field.name for field in dataclasses.fields(CONFIGS[method])}
        if set(options) - known:
            raise PrunedroidError(f"unknown {method} options: {', '.join(sorted(set(options) - known))}; known: "
                                  f"{', '.join(sorted(known))}")
        method = CONFIGS[method](**options)  # type: ignore[arg-type]
        options = {}
    if options:
        raise PrunedroidError(f"unknown options for {method_name(method)}: {', '.join(options)}")
    if not isinstance(method, str):
        budget = method.resolve_budget(budget, None)
    graph = channel_graph(model, example_input)
    if not graph.groups:
        raise PrunedroidError("the model has no prunable channel groups (a conv whose output another layer reads)")
    allocation, per_group = {"allocation": "uniform"}, budget
    if budget is not None and budget.allocation != "uniform":
        key = json.dumps([method_name(method), method_options(method), seed])
        cut_to = lambda group_budget: cut(model, graph, example_input, method, group_budget, seed, calibration)[0]

        def curves() -> list[Curve]:
            if evaluate is None:
                raise PrunedroidError(f"allocation {budget.allocation!r} measures accuracy: give `evaluate` (a "
                                      f"model's accuracy on held-out data)")
            measure = lambda: layer_sensitivity(graph, model, cut_to, evaluate)
            return measure() if remember_curves is None else remember_curves(key, measure)

        counts, allocation = allocate(graph, budget,
                                      lambda: channel_scores(model, graph, example_input, method, seed, calibration),
                                      curves, predict_ms)
        per_group = Budget(layer_channels=tuple(counts))
    pruned, rows = cut(model, graph, example_input, method, per_group, seed, calibration)
    shape = tuple(example_input.shape[1:])
    before, after = count_cost(model, shape), count_cost(pruned, shape)
    report = {
        "method": method_name(method), "options": method_options(method),
        "budget": budget.to_dict() if budget else None, "seed": seed, "layers": rows, **allocation,
        "macs_before": before.macs, "macs_after": after.macs,
        "params_before": before.params, "params_after": after.params, "mac_reduction": 1 - after.macs / before.macs,
        "param_reduction": 1 - after.params / before.params,
        "groups": [list(group.producers) for group in graph.groups],
    }
    return PruneResult(pruned, report)


__all__ = ["METHODS", "Budget", "Calibration", "ChannelGraph", "ChannelGroup", "KMeansConfig", "LibraryConfig",
           "Method", "ModelCost", "PruneResult", "SCPConfig", "channel_graph", "channel_scores", "count_cost", "cut",
           "kept_counts", "method_name", "method_options", "prune", "prune_channels", "resolve_method"]
