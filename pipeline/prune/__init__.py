"""Channel pruning: a method scores or picks channels, a budget says how many go, one surgery cuts them.

A method is the name of a scorer ("l1", "random") or a method's options (SCPConfig, KMeansConfig, LibraryConfig)."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from pipeline import data as cifar
from pipeline.checkpoint import model_from_checkpoint
from pipeline.cost import count_cost
from pipeline.errors import PipelineError
from pipeline.models import VGG
from pipeline.options import with_options
from pipeline.prune.budget import Budget, keep_top, kept_counts, mac_reduction, required_budget
from pipeline.prune.kmeans import KMeansConfig, prune_kmeans
from pipeline.prune.l1 import l1_scores, random_scores
from pipeline.prune.library import LibraryConfig, library_scores
from pipeline.prune.scp import SCPConfig, prune_scp
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


def prune(model: VGG, method: Method, budget: Budget | None, seed: int = 0,
          evaluation: cifar.Split | None = None) -> tuple[VGG, dict]:
    """The pruned model and a report: per layer channels before/after, MACs/params before/after.

    evaluation: labelled held-out images, uint8 (n, 3, 32, 32), that data-driven methods analyse (SCP's feature
    maps, Taylor importance's gradients); see flow.evaluation_set."""
    if isinstance(method, SCPConfig):
        if evaluation is None:
            raise PipelineError("SCP needs evaluation images (held-out training images) to compare feature maps")
        pruned, rows = prune_scp(model, method, budget, evaluation.images)
    elif isinstance(method, KMeansConfig):
        pruned, rows = prune_kmeans(model, method, budget, seed)
    elif isinstance(method, LibraryConfig) or method in SCORERS:
        budget = required_budget(method_name(method), budget)
        scores = (library_scores(model, method, evaluation) if isinstance(method, LibraryConfig)
                  else SCORERS[method](model, seed))
        keep = keep_top(scores, kept_counts(model.spec, budget))
        pruned = prune_channels(model, keep)
        rows = [{"layer": c.layer, "channels_before": c.channels, "channels_after": len(keep[c.layer]),
                 "kept": keep[c.layer]} for c in vgg_couplings(model)]
    else:
        raise PipelineError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    before, after = count_cost(model), count_cost(pruned)
    report = {
        "method": method_name(method), "options": method_options(method),
        "budget": budget.to_dict() if budget else None, "seed": seed, "layers": rows,
        "macs_before": before.macs, "macs_after": after.macs,
        "params_before": before.params, "params_after": after.params, "mac_reduction": 1 - after.macs / before.macs,
        "param_reduction": 1 - after.params / before.params,
    }
    return pruned, report


def prune_checkpoint(checkpoint: dict, method: Method, budget: Budget | None, seed: int = 0,
                     evaluation: cifar.Split | None = None) -> dict:
    """A checkpoint of the pruned model (not yet fine-tuned: epoch 0, no optimiser state), carrying the parent's
    recipe and data statistics and a `pruning` report."""
    pruned, report = prune(model_from_checkpoint(checkpoint), method, budget, seed, evaluation)
    parent_metrics = checkpoint.get("metrics", {})
    report["parent_test_top1"] = parent_metrics.get("test", {}).get("top1")
    return {"arch": pruned.spec.to_dict(), "state_dict": pruned.state_dict(), "epoch": 0, "history": [],
            "recipe": checkpoint["recipe"], "data": checkpoint["data"], "seed": seed, "metrics": {},
            "cost": {"macs": report["macs_after"], "params": report["params_after"]}, "pruning": report}


__all__ = ["Budget", "KMeansConfig", "LibraryConfig", "METHODS", "Method", "SCPConfig", "kept_counts",
           "mac_reduction", "method_name", "method_options", "prune", "prune_channels", "prune_checkpoint",
           "resolve_method", "vgg_couplings"]
