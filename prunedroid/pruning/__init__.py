"""Channel pruning of any traced CNN: a method scores or picks channels, a budget says how many go, channel groups
couple what must be cut together, one surgery cuts them.

This package is the library: it imports torch, numpy and the libraries its methods build on (scikit-learn's k-means,
Torch-Pruning's dependency graph and criteria), never the project's training, export, measurement or app layers.
What it needs from them - how to evaluate a model, how long a layer takes - is passed in as functions.

    result = prune(model, example_input, "l1", mac_reduction=0.5)
    result.model     # a smaller copy of `model`, same class, same output shape
    result.report    # channels per group, MACs and parameters before and after

A method is a registered PruningMethod (prunedroid/pruning/method.py: one class per method, its options as fields)
or its name ("l1", "random", "scp", "kmeans", "torch-pruning").
"""
from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunedroid.errors import PrunedroidError
from prunedroid.options import check_seed, with_options
from prunedroid.pruning.allocation import Curve, allocate, layer_sensitivity
from prunedroid.pruning.budget import (
    BUDGET_OPTIONS,
    Amount,
    Budget,
    LatencyReduction,
    LayerChannels,
    LayerRatios,
    MacReduction,
    Ratio,
    kept_counts,
)
from prunedroid.pruning.cost import ModelCost, count_cost
from prunedroid.pruning.groups import ChannelGraph, ChannelGroup, channel_graph
from prunedroid.pruning.kmeans import KMeansConfig
from prunedroid.pruning.l1 import L1Config
from prunedroid.pruning.method import REGISTRY, Calibration, PruningMethod, method_of
from prunedroid.pruning.random_choice import RandomConfig
from prunedroid.pruning.scp import SCPConfig
from prunedroid.pruning.surgery import prune_channels
from prunedroid.pruning.torchpruning import TorchPruningConfig

Method = str | PruningMethod  # a registered method's name (its default options) or its options


def method_name(method: Method) -> str:
    return method_of(method).name


def method_options(method: Method) -> dict:
    return method_of(method).to_dict()


def owners(option: str) -> list[str]:
    """The registered methods that have an option of this name."""
    return [name for name, cls in REGISTRY.items() if option in {f.name for f in dataclasses.fields(cls)}]


def resolve_method(name: str, options: Mapping[str, object], budget: Budget | None,
                   default_budget: Budget | None = None) -> tuple[PruningMethod, Budget | None]:
    """The method and the budget it prunes to, from option values (strings as typed, or values; None: not given).
    An option that belongs to another method, or a budget the method's options rule out, is an error naming the
    fix."""
    cls = type(method_of(name))
    given = {key: value for key, value in options.items() if value is not None}
    own = {field.name for field in dataclasses.fields(cls)}
    foreign = [key for key in given if key not in own]
    if foreign:
        raise PrunedroidError("; ".join(f"`{key}` applies to `method` {'/'.join(owners(key)) or 'none'} only"
                                        for key in foreign)
                              + f", not to `method` {name}")
    config = with_options(cls(), given, name)
    return config, config.resolve_budget(budget, default_budget)


def channel_scores(model: nn.Module, graph: ChannelGraph, example_input: torch.Tensor, method: Method,
                   seed: int = 0, calibration: Calibration | None = None) -> list[torch.Tensor]:
    """Per group, (C,) the method's own channel scores, higher means keep: what global allocation ranks across
    groups (SCP: one minus a channel's highest similarity in its group; k-means: a filter's distance to its nearest
    neighbour)."""
    return method_of(method).scores(model, graph, example_input, seed, calibration)


def cut(model: nn.Module, graph: ChannelGraph, example_input: torch.Tensor, method: Method, budget: Budget | None,
        seed: int = 0, calibration: Calibration | None = None) -> tuple[nn.Module, list[dict]]:
    """The method choosing which channels go, `budget` saying how many per group; the pruned model and one report
    row per group."""
    return method_of(method).cut(model, graph, example_input, budget, seed, calibration)


@dataclass
class PruneResult:
    """model: the pruned copy; report: what was cut and what it cost (see `prune`)."""

    model: nn.Module
    report: dict


def prune(model: nn.Module, example_input: torch.Tensor, method: Method = "l1", budget: Budget | None = None, *,
          calibration: Calibration | None = None, seed: int = 0,
          evaluate: Callable[[nn.Module], float] | None = None,
          model_ms: Callable[[ChannelGraph, Sequence[int]], float] | None = None,
          remember: Callable[[str, Callable[[], Any]], Any] | None = None,
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
    evaluate: model -> accuracy in percent on held-out data (allocation "sensitivity", "latency" and "search").
    model_ms: (the model's channel graph, channels per group) -> predicted batch-1 latency in ms (allocation
    "latency"; e.g. a lookup table of layer_shapes).
    remember: (key, measure) -> measure(), or what an earlier call stored under `key`: a cache of what allocations
    measure (sensitivity curves, each search candidate's score; JSON values), kept between calls and runs.

    The report: method, options, budget, seed, per group ("layers") channels before/after and the kept indices, the
    allocation's measurements, MACs and parameters before/after and their reductions, the groups' producers."""
    budget_options = {key: options.pop(key) for key in list(options) if key in BUDGET_OPTIONS}
    if budget_options:
        if budget is not None:
            raise PrunedroidError(f"give a Budget or its fields ({', '.join(budget_options)}), not both")
        budget = Budget.of(**budget_options)
    if isinstance(method, str):
        known = {field.name for field in dataclasses.fields(type(method_of(method)))}
        if set(options) - known:
            raise PrunedroidError(f"unknown {method} options: {', '.join(sorted(set(options) - known))}; known: "
                                  f"{', '.join(sorted(known)) or 'none'}")
        method, budget = resolve_method(method, options, budget)
        options = {}
    elif options:
        raise PrunedroidError(f"unknown options for {method.name}: {', '.join(options)} (pass them in its "
                              f"{type(method).__name__})")
    else:
        budget = method.resolve_budget(budget, None)
    check_seed(seed)
    check_model(model)
    calibration = checked_calibration(calibration, model, example_input)
    was_training = model.training
    try:
        pruned, report = _prune(model, example_input, method, budget, calibration, seed, evaluate, model_ms,
                                remember)
    finally:
        model.train(was_training)
    return PruneResult(pruned.train(was_training), report)


def check_model(model: nn.Module) -> None:
    """Refuses a model the library cannot score, cut or count: weights without values (the meta device) or of
    another floating type than float32 (the cost is counted on a float32 input)."""
    parameters = list(model.parameters())
    if any(parameter.is_meta for parameter in parameters):
        raise PrunedroidError("the model's weights are on the meta device (shapes without values, nothing to score): "
                              "load real weights first (load_state_dict(..., assign=True)) or build it on the CPU")
    others = sorted({str(p.dtype).removeprefix("torch.") for p in parameters if p.is_floating_point()}
                    - {"float32"})
    if others:
        raise PrunedroidError(f"the model has {', '.join(others)} parameters, and pruning scores, cuts and counts "
                              f"float32 models: call model.float() first (and give float32 inputs)")


def checked_calibration(calibration: Calibration | None, model: nn.Module,
                        example_input: torch.Tensor) -> list | None:
    """The calibration batches as a list (an iterator is read once here: allocations go over them several times),
    each checked: inputs shaped as `example_input` is, finite, and giving finite activations in `model`."""
    if calibration is None:
        return None
    if isinstance(calibration, torch.Tensor):
        raise PrunedroidError("calibration is one tensor: pass a list of batches, e.g. [images] (or [(images, "
                              "labels)] for a criterion that needs labels)")
    batches = list(calibration)
    expected = tuple(example_input.shape[1:])
    was_training = model.training
    try:
        model.eval()
        for index, batch in enumerate(batches):
            inputs = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
            if not isinstance(inputs, torch.Tensor):
                raise PrunedroidError(f"calibration batch {index} is a {type(inputs).__name__}: each batch is a tensor "
                                      f"of inputs, or an (inputs, labels) pair")
            if tuple(inputs.shape[1:]) != expected:
                raise PrunedroidError(f"calibration batch {index} has shape {tuple(inputs.shape)}; the model takes "
                                      f"(N, {', '.join(map(str, expected))}) as `example_input` says")
            if not torch.isfinite(inputs).all():
                raise PrunedroidError(f"calibration batch {index} holds non-finite values (NaN or infinity): give "
                                      f"inputs as the model takes them, normalised and finite")
            with torch.no_grad():
                outputs = model(inputs)
            if isinstance(outputs, torch.Tensor) and not torch.isfinite(outputs).all():
                raise PrunedroidError(f"the model computes non-finite activations on calibration batch {index} (NaN "
                                      f"or infinity): its weights or inputs overflow float32; check the weights and "
                                      f"the inputs' normalisation")
    finally:
        model.train(was_training)
    return batches


def _prune(model: nn.Module, example_input: torch.Tensor, method: PruningMethod, budget: Budget | None,
           calibration: list | None, seed: int, evaluate: Callable[[nn.Module], float] | None,
           model_ms: Callable[[ChannelGraph, Sequence[int]], float] | None,
           remember: Callable[[str, Callable[[], Any]], Any] | None) -> tuple[nn.Module, dict]:
    graph = channel_graph(model, example_input)
    if not graph.groups:
        why = "; ".join(f"{', '.join(whole.producers[:3])}{' ...' if len(whole.producers) > 3 else ''}: "
                        f"{whole.reason}" for whole in graph.left_whole[:2])
        if len(graph.left_whole) > 2:
            why += f"; and {len(graph.left_whole) - 2} more groups"
        raise PrunedroidError(f"the model has no channel group the library can prune: "
                              f"{why or 'it has no ungrouped Conv2d'}")
    allocation, per_group = {"allocation": "uniform"}, budget
    if budget is not None and budget.allocation != "uniform":
        key = json.dumps([method_name(method), method_options(method), seed])
        cut_to = lambda group_budget: cut(model, graph, example_input, method, group_budget, seed, calibration)[0]

        def accuracy() -> Callable[[nn.Module], float]:
            if evaluate is None:
                raise PrunedroidError(f"allocation {budget.allocation!r} measures accuracy: give `evaluate` (a "
                                      f"model's accuracy on held-out data)")
            return evaluate

        def remembered(name: str, measure: Callable[[], Any]) -> Any:
            return measure() if remember is None else remember(name, measure)

        def curves() -> list[Curve]:
            measured = remembered(key, lambda: layer_sensitivity(graph, model, cut_to, accuracy()))
            return [[(int(kept), float(loss)) for kept, loss in curve] for curve in measured]

        def score(counts: list[int]) -> float:
            name = json.dumps([*json.loads(key), "search", counts])
            return float(remembered(name, lambda: accuracy()(cut_to(Budget(LayerChannels(tuple(counts)))))))

        counts, allocation = allocate(graph, budget,
                                      lambda: channel_scores(model, graph, example_input, method, seed, calibration),
                                      curves, None if model_ms is None else functools.partial(model_ms, graph),
                                      score, seed)
        per_group = Budget(LayerChannels(tuple(counts)))
    pruned, rows = cut(model, graph, example_input, method, per_group, seed, calibration)
    shape = tuple(example_input.shape[1:])
    before = count_cost(model, shape)
    try:
        after = count_cost(pruned, shape)
    except RuntimeError as err:
        raise PrunedroidError(f"the pruned model no longer runs ({str(err).splitlines()[0][:200]}): its forward "
                              f"slices, chunks or reshapes channels by fixed position, which cutting whole channels "
                              f"cannot follow; leave those layers whole (`layer_ratios` 0) or write the forward with "
                              f"the layers' own widths") from None
    report = {
        "method": method_name(method), "options": method_options(method),
        "budget": budget.to_dict() if budget else None, "seed": seed, "layers": rows, **allocation,
        "macs_before": before.macs, "macs_after": after.macs,
        "params_before": before.params, "params_after": after.params, "mac_reduction": 1 - after.macs / before.macs,
        "param_reduction": 1 - after.params / before.params,
        "groups": [list(group.producers) for group in graph.groups],
        "left_whole": [{"convs": list(whole.producers), "reason": whole.reason} for whole in graph.left_whole],
    }
    return pruned, report


__all__ = ["BUDGET_OPTIONS", "REGISTRY", "Amount", "Budget", "LatencyReduction", "LayerChannels", "LayerRatios",
           "MacReduction", "Ratio", "Calibration", "ChannelGraph", "ChannelGroup", "KMeansConfig", "L1Config",
           "TorchPruningConfig", "Method", "ModelCost", "PruneResult", "PruningMethod", "RandomConfig", "SCPConfig",
           "channel_graph", "channel_scores", "count_cost", "cut", "kept_counts", "method_name", "method_options",
           "prune", "prune_channels", "resolve_method"]
