"""Channel pruning: a method scores or picks channels, a budget says how many go, one surgery cuts them.

A method is the name of a scorer ("l1", "random") or a method's options (SCPConfig, KMeansConfig, LibraryConfig)."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pipeline import data as cifar
from pipeline.checkpoint import model_from_checkpoint, tested_top1
from pipeline.cost import count_cost
from pipeline.errors import PipelineError
from pipeline.models import VGG
from pipeline.options import with_options
from pipeline.prune.allocation import allocate
from pipeline.prune.budget import Budget, keep_top, kept_counts, mac_reduction, required_budget
from pipeline.prune.kmeans import KMeansConfig, distinct_scores, prune_kmeans
from pipeline.prune.l1 import l1_scores, random_scores
from pipeline.prune.latency import LatencyTable
from pipeline.prune.library import LibraryConfig, library_scores
from pipeline.prune.scp import SCPConfig, prune_scp, redundancy_scores
from pipeline.prune.surgery import prune_channels, vgg_couplings

# Methods that rank channels by a score: the budget decides how many each layer keeps, the score which.
SCORERS: dict[str, Callable[[nn.Module, int], list[torch.Tensor]]] = {
    "l1": lambda model, seed: l1_scores(model),
    "random": random_scores,
}
# Methods with options of their own: each option dataclass validates itself and says which budget it prunes to.
CONFIGS = {config.name: config for config in (SCPConfig, KMeansConfig, LibraryConfig)}
METHODS = (*SCORERS, *CONFIGS)
Method = str | SCPConfig | KMeansConfig | LibraryConfig


def method_name(method: Method) -> str:
    return method if isinstance(method, str) else method.name


def method_options(method: Method) -> dict:
    return {} if isinstance(method, str) else method.to_dict()


def resolve_method(name: str, options: dict[str, str | int | float | bool | None], budget: Budget | None,
                   default_budget: Budget | None = None) -> tuple[Method, Budget | None]:
    """The method and the budget it prunes to, from command-line values (None: not given). An option that belongs
    to another method, or a budget the method's options rule out, is an error naming the fix."""
    if name not in METHODS:
        raise PipelineError(f"unknown pruning method {name!r}; choose one of {', '.join(METHODS)}")
    given = {key: value for key, value in options.items() if value is not None}
    own = {field.name for field in dataclasses.fields(CONFIGS[name])} if name in CONFIGS else set()
    foreign = [key for key in given if key not in own]
    if foreign:
        owners = lambda key: "/".join(m for m, c in CONFIGS.items() if key in {f.name for f in dataclasses.fields(c)})
        raise PipelineError("; ".join(f"--{key.replace('_', '-')} applies to --method {owners(key)} only"
                                      for key in foreign) + f", not to --method {name}")
    if name in SCORERS:
        return name, required_budget(name, budget, default_budget)
    config = with_options(CONFIGS[name](), given, name)
    return config, config.resolve_budget(budget, default_budget)


def _scp_images(evaluation: cifar.Split | None) -> torch.Tensor:
    if evaluation is None:
        raise PipelineError("SCP needs evaluation images (held-out training images) to compare feature maps")
    return evaluation.images


def channel_scores(model: VGG, method: Method, seed: int = 0,
                   evaluation: cifar.Split | None = None) -> list[torch.Tensor]:
    """Per conv layer, (C,) the method's own channel scores, higher means keep: what global allocation ranks across
    layers. Scorers give theirs; SCP one minus a channel's highest similarity in its layer; k-means a filter's
    distance to its nearest neighbour."""
    if isinstance(method, SCPConfig):
        return redundancy_scores(model, method, _scp_images(evaluation))
    if isinstance(method, KMeansConfig):
        return distinct_scores(model, method)
    if isinstance(method, LibraryConfig):
        return library_scores(model, method, evaluation)
    return SCORERS[method](model, seed)


def cut(model: VGG, method: Method, budget: Budget | None, seed: int = 0,
        evaluation: cifar.Split | None = None) -> tuple[VGG, list[dict]]:
    """The method choosing which channels go, `budget` saying how many per layer; the pruned model and one report
    row per conv layer."""
    if isinstance(method, SCPConfig):
        return prune_scp(model, method, budget, _scp_images(evaluation))
    if isinstance(method, KMeansConfig):
        return prune_kmeans(model, method, budget, seed)
    if isinstance(method, LibraryConfig) or method in SCORERS:
        budget = required_budget(method_name(method), budget)
        keep = keep_top(channel_scores(model, method, seed, evaluation), kept_counts(model.spec, budget))
        return prune_channels(model, keep), [
            {"layer": c.layer, "channels_before": c.channels, "channels_after": len(keep[c.layer]),
             "kept": keep[c.layer]} for c in vgg_couplings(model)]
    raise PipelineError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")


def prune(model: VGG, method: Method, budget: Budget | None, seed: int = 0,
          evaluation: cifar.Split | None = None, holdout: cifar.Split | None = None,
          sensitivity_cache: Path | None = None, latency_table: Path | None = None) -> tuple[VGG, dict]:
    """The pruned model and a report: per layer channels before/after, MACs/params before/after.

    evaluation: labelled held-out images, uint8 (n, 3, 32, 32), that data-driven methods analyse (SCP's feature
    maps, Taylor importance's gradients); see flow.evaluation_set. holdout: all the base's held-out training images,
    which --allocation sensitivity and latency measure top-1 on; sensitivity_cache: a JSON file keeping their
    per-layer curves for the next target (keyed by method, options, seed and held-out count: one file per base
    model); latency_table: the JSON lookup table of layer latencies --allocation latency reads and extends (one file
    per machine; None measures afresh)."""
    allocation, per_layer = {"allocation": "uniform"}, budget
    if budget is not None and budget.allocation != "uniform":
        key = json.dumps([method_name(method), method_options(method), seed, 0 if holdout is None else len(holdout)])
        counts, allocation = allocate(model, budget, lambda: channel_scores(model, method, seed, evaluation),
                                      lambda layer_budget: cut(model, method, layer_budget, seed, evaluation)[0],
                                      holdout, sensitivity_cache, key,
                                      LatencyTable.load(latency_table) if budget.allocation == "latency" else None)
        per_layer = Budget(layer_channels=tuple(counts))
    pruned, rows = cut(model, method, per_layer, seed, evaluation)
    before, after = count_cost(model), count_cost(pruned)
    report = {
        "method": method_name(method), "options": method_options(method),
        "budget": budget.to_dict() if budget else None, "seed": seed, "layers": rows, **allocation,
        "macs_before": before.macs, "macs_after": after.macs,
        "params_before": before.params, "params_after": after.params, "mac_reduction": 1 - after.macs / before.macs,
        "param_reduction": 1 - after.params / before.params,
    }
    return pruned, report


def prune_checkpoint(checkpoint: dict, method: Method, budget: Budget | None, seed: int = 0,
                     evaluation: cifar.Split | None = None, holdout: cifar.Split | None = None,
                     sensitivity_cache: Path | None = None, latency_table: Path | None = None) -> dict:
    """A checkpoint of the pruned model (not yet fine-tuned: epoch 0, no optimiser state), carrying the parent's
    recipe and data statistics and a `pruning` report. Pruning a pruned checkpoint again keeps the earlier report
    (`previous`) and states the reductions against the unpruned model the chain started from (`original`)."""
    pruned, report = prune(model_from_checkpoint(checkpoint), method, budget, seed, evaluation, holdout,
                           sensitivity_cache, latency_table)
    report["parent_test_top1"] = tested_top1(checkpoint)
    previous = checkpoint.get("pruning")
    if previous:
        original = previous.get("original") or {"macs": previous.get("macs_before"),
                                                "params": previous.get("params_before")}
        if not all(type(original.get(key)) is int and original[key] > 0 for key in ("macs", "params")):
            raise PipelineError("the checkpoint's pruning record has no MACs and parameters of the model it was pruned "
                                "from: the file was edited; prune the unpruned base instead")
        report.update(previous=previous, original=original,
                      mac_reduction_from_original=1 - report["macs_after"] / original["macs"],
                      param_reduction_from_original=1 - report["params_after"] / original["params"])
    return {"arch": pruned.spec.to_dict(), "state_dict": pruned.state_dict(), "epoch": 0, "history": [],
            "recipe": checkpoint.get("recipe", {}), "data": checkpoint.get("data", {}), "seed": seed, "metrics": {},
            "cost": {"macs": report["macs_after"], "params": report["params_after"]}, "pruning": report}


__all__ = ["Budget", "KMeansConfig", "LibraryConfig", "METHODS", "Method", "SCPConfig", "channel_scores", "cut",
           "kept_counts",
           "mac_reduction", "method_name", "method_options", "prune", "prune_channels", "prune_checkpoint",
           "resolve_method", "vgg_couplings"]
