"""A prune as asked for in option strings (the command line's, or a script's): the method, its budget with the
recommended recipe filled in and fitted to the model, and where an --allocation latency takes its timings from.

    method, budget = method_and_budget("l1", {"mac_reduction": "0.5"})   # sensitivity allocation, multiples of 16
    budget = fitted_budget(checkpoint.arch, budget, round_to_typed=False)

Options are named by field in backquotes (`min_keep`); the command line shows its flag in their place.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch

from prunedroid.errors import PrunedroidError
from prunedroid.measure.latency import LatencyOptions
from prunedroid.models import build_model, example_input
from prunedroid.options import option_fields, parse_option, with_options
from prunedroid.pruning import (
    BUDGET_OPTIONS,
    REGISTRY,
    Budget,
    PruningMethod,
    channel_graph,
    kept_counts,
    resolve_method,
)
from prunedroid.pruning.allocation import check_reachable
from prunedroid.pruning.budget import AMOUNT_OPTIONS, BUDGET_SETTINGS, LayerChannels

# A MAC target is shared out by the recipe measured best for a phone (benchmarks/results/defaults_quick.md) unless
# `allocation` / `round_to` are given. The library's Budget keeps uniform, unrounded defaults: sensitivity needs
# held-out data its caller must pass.
RECOMMENDED: dict[str, Any] = {"allocation": "sensitivity", "round_to": 16}
# What a prune is asked for by: a budget's amounts (per-group channel counts come from an allocation, not an option)
# and settings, every registered method's options, and the latency options.
BUDGET_ASKED = tuple(name for name in BUDGET_OPTIONS if name != LayerChannels.option)
LATENCY_ASKED = tuple(field.name for field in option_fields(LatencyOptions))


def method_asked() -> tuple[str, ...]:
    """Every registered method's options (registered now: a user's method may join after import)."""
    return tuple(dict.fromkeys(field.name for method in REGISTRY.values() for field in option_fields(method)
                               if field.name not in BUDGET_OPTIONS))


def recommended(budget_options: Mapping[str, object]) -> dict[str, object]:
    """`budget_options` with RECOMMENDED filled in where not given, for a MAC target only (any other amount is taken
    as given)."""
    if budget_options.get("mac_reduction") is None:
        return dict(budget_options)
    return {**budget_options, **{key: value for key, value in RECOMMENDED.items() if budget_options.get(key) is None}}


def method_and_budget(method: str, options: Mapping[str, object],
                      default_budget: float | None = None) -> tuple[PruningMethod, Budget | None]:
    """The method and its budget from option values (strings as typed; None or absent: not given). default_budget:
    the fraction of MACs (or, with `allocation` latency, of latency) removed when no amount is given. `min_keep` is
    the floor of a non-uniform allocation, or else k-means' own floor for its automatic K."""
    budget_options = {name: options.get(name) for name in BUDGET_ASKED}
    method_options = {name: options.get(name) for name in method_asked()}
    allocation = budget_options["allocation"]
    amount_given = any(budget_options.get(name) is not None for name in AMOUNT_OPTIONS)
    mac_target = budget_options["mac_reduction"] is not None or (default_budget is not None and not amount_given)
    shared_by = allocation or (RECOMMENDED["allocation"] if mac_target else None)
    if budget_options["candidates"] is not None and shared_by != "search":
        raise PrunedroidError("`candidates` is how many allocations `allocation` search scores; add `allocation` "
                              "search, or leave it out")
    if budget_options["min_keep"] is not None and shared_by in (None, "uniform"):
        if method != "kmeans":
            raise PrunedroidError("`min_keep` is the per-layer floor of `allocation` global, sensitivity, latency or "
                                  "search (or of kmeans' automatic K); add `allocation` global, sensitivity, latency "
                                  "or search")
        method_options = {**method_options, "min_keep": budget_options.pop("min_keep")}
    budget = Budget.from_options(recommended(budget_options))
    target = "latency_reduction" if allocation == "latency" else "mac_reduction"
    default = (Budget.from_options(recommended({**budget_options, target: default_budget}))
               if budget is None and default_budget is not None else None)
    pruning, resolved = resolve_method(method, method_options, budget, default)
    for setting, does in (("round_to", "rounds"), ("allocation", "shares out")):
        given = budget_options[setting]
        if given is not None and (resolved is None or getattr(resolved, setting) != parse_option(
                str(given), BUDGET_SETTINGS[setting], setting)):
            raise PrunedroidError(f"`{setting}` {does} a budget's channel counts; give `mac_reduction` with it (a "
                                  f"threshold or an automatic K sets no budget)")
    return pruning, resolved


def latency_options(options: Mapping[str, object], budget: Budget | None) -> LatencyOptions:
    """The latency options, refused where no latency budget would use them."""
    given = {name: options.get(name) for name in LATENCY_ASKED}
    if any(value is not None for value in given.values()) and (budget is None or budget.allocation != "latency"):
        raise PrunedroidError("`latency_runtime` and `latency_table` say where `allocation` latency takes its layer "
                              "timings from; add `allocation` latency `latency_reduction` F, or leave them out")
    if given["latency_runtime"] is not None and given["latency_table"] is not None:
        raise PrunedroidError("`latency_table` is a phone's table, measured in the runtime it names: give it or "
                              "`latency_runtime`, not both")
    return with_options(LatencyOptions(), given, "latency")


def fitted_budget(arch: dict, budget: Budget | None, round_to_typed: bool,
                  say: Callable[[str], None] = print) -> Budget | None:
    """The budget, checked against the model before any data is read or model trained (a `layer_ratios` count that
    cannot apply, an unreachable MAC target fail here). Where `round_to` was not given, the recommended multiple
    steps down (16, 8, 4, 2, 1) until the target is reachable on this model - narrow models have groups of fewer
    channels than it - saying so."""
    if budget is None or budget.allocation == "latency":  # a latency target is checked once the layers are measured
        return budget
    with torch.device("meta"):  # shapes only: no memory for the weights
        model = build_model(arch)
    graph = channel_graph(model, example_input(device="meta"))
    check = kept_counts if budget.allocation == "uniform" else check_reachable
    if round_to_typed:
        check(graph, budget)
        return budget
    for multiple in [m for m in (16, 8, 4, 2, 1) if m < budget.round_to]:
        try:
            check(graph, budget)
            break
        except PrunedroidError:
            say(f"note: `round_to` {budget.round_to} cannot reach the target on this model (its groups are too "
                f"narrow); trying multiples of {multiple}")
            budget = dataclasses.replace(budget, round_to=multiple)
    else:
        check(graph, budget)  # the last multiple left: fits, or the error names the fix
    return budget
