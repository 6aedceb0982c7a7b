"""How much to prune, and turning per-channel scores into kept channels under that budget."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from prunedroid.errors import PrunedroidError
from prunedroid.options import option, parse_option
from prunedroid.pruning.groups import ChannelGraph

ALLOCATIONS = ("uniform", "global", "sensitivity", "latency", "search")
MAX_CANDIDATES = 10_000  # a search scores each candidate on held-out images: more would take days


@dataclass(frozen=True)
class _Fraction:
    """An amount that is one fraction in (0, 1) of something: every group's channels, the MACs, the latency."""

    fraction: float
    option: ClassVar[str] = ""
    help: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise PrunedroidError(f"`{self.option}` must be in (0, 1), got {self.fraction}; e.g. 0.5 removes half")


@dataclass(frozen=True)
class Ratio(_Fraction):
    """The same fraction of every group's channels removed."""

    option: ClassVar[str] = "ratio"
    help: ClassVar[str] = "fraction of every channel group's channels to remove"


@dataclass(frozen=True)
class MacReduction(_Fraction):
    """A fraction of the model's multiply-accumulates removed (within the budget's tolerance)."""

    option: ClassVar[str] = "mac_reduction"
    help: ClassVar[str] = "fraction of MACs to remove, e.g. 0.5 (reached within 1%)"


@dataclass(frozen=True)
class LatencyReduction(_Fraction):
    """A fraction of the model's predicted batch-1 latency removed (allocation "latency" only)."""

    option: ClassVar[str] = "latency_reduction"
    help: ClassVar[str] = ("with `allocation` latency: fraction of the predicted latency to remove (the per-layer "
                           "lookup table is kept in latency-table-<runtime>.json beside the output folder)")


@dataclass(frozen=True)
class LayerRatios:
    """A fraction of each group's channels removed, one per group in the graph's order (0 leaves a group whole)."""

    fractions: tuple[float, ...]
    option: ClassVar[str] = "layer_ratios"
    help: ClassVar[str] = ("comma-separated fraction per channel group (13 values for VGG16, one per conv layer; 0 "
                           "leaves a group whole)")

    def __post_init__(self) -> None:
        for value in self.fractions:
            if not 0 <= value < 1:
                raise PrunedroidError(f"each `layer_ratios` value must be in [0, 1), got {value}; 0 leaves a layer "
                                      f"whole, 0.5 removes half its channels")
        if not any(self.fractions):
            raise PrunedroidError("every `layer_ratios` value is 0, so nothing would be pruned; give a layer a ratio "
                                  "above 0")


@dataclass(frozen=True)
class LayerChannels:
    """The channels each group keeps, in the graph's order: what an allocation resolves a target to."""

    counts: tuple[int, ...]
    option: ClassVar[str] = "layer_channels"
    help: ClassVar[str] = "channels each group keeps, one count per channel group"


Amount = Ratio | LayerRatios | MacReduction | LatencyReduction | LayerChannels
AMOUNTS: tuple[type[Amount], ...] = (Ratio, LayerRatios, MacReduction, LatencyReduction, LayerChannels)
AMOUNT_OPTIONS = {cls.option: cls for cls in AMOUNTS}


def amount_value(amount: Amount) -> float | tuple[float, ...] | tuple[int, ...]:
    """The one number (or per-group numbers) an amount holds."""
    return getattr(amount, dataclasses.fields(amount)[0].name)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Budget:
    """How much to prune (`amount`: one of the AMOUNTS) and how: a MAC or latency target is shared among groups by
    `allocation` and reached within `tolerance` (absolute); round_to suits SIMD kernels, which work on 4, 8 or 16
    channels at a time; allocations are in prunedroid/pruning/allocation.py."""

    amount: Amount
    allocation: str = option("uniform", "how `mac_reduction` is shared among groups: uniform (one ratio), global "
                                        "(the method's channel scores ranked across groups), sensitivity (measured "
                                        "accuracy loss per MAC) or search (`candidates` random allocations scored "
                                        "on held-out images, the best kept); latency: accuracy loss per ms of "
                                        "measured layer latency, to a `latency_reduction`")
    round_to: int = option(1, "every pruned group keeps a multiple of this many channels, at least this many")
    min_keep: float = option(0.1, "the fraction of a group's channels it never goes below with `allocation` global/"
                                  "sensitivity/latency/search; with `method` kmeans and no allocation, the floor of "
                                  "its automatic K (there 0.25 unless given)")
    candidates: int = option(32, "with `allocation` search: how many per-group allocations meeting the target are "
                                 "pruned and scored by held-out top-1 after re-measuring BatchNorm (the first is "
                                 "near-uniform, the rest drawn at random from the seed)")
    tolerance: float = 0.01

    def __post_init__(self) -> None:
        if not isinstance(self.amount, AMOUNTS):
            raise PrunedroidError(f"a budget's amount is one of {', '.join(c.__name__ for c in AMOUNTS)}, got "
                                  f"{type(self.amount).__name__}")
        if type(self.round_to) is not int or not 1 <= self.round_to <= 256:
            raise PrunedroidError(f"`round_to` must be a whole number of channels in 1..256, got {self.round_to}")
        if self.allocation not in ALLOCATIONS:
            raise PrunedroidError(f"unknown `allocation` {self.allocation!r}; choose one of {', '.join(ALLOCATIONS)}")
        if (self.allocation == "latency") != isinstance(self.amount, LatencyReduction):
            raise PrunedroidError("`latency_reduction` and `allocation` latency go together: the latency allocation "
                                  "trims to a latency target, and only it measures latency")
        if type(self.candidates) is not int or not 1 <= self.candidates <= MAX_CANDIDATES:
            raise PrunedroidError(f"`candidates` must be a whole number in 1..{MAX_CANDIDATES}, got {self.candidates}")
        if self.allocation in ("global", "sensitivity", "search") and not isinstance(self.amount, MacReduction):
            raise PrunedroidError(f"`allocation` {self.allocation} shares a MAC target among layers: give "
                                  f"`mac_reduction`, not `{self.amount.option}` (that fixes each layer's share)")
        if not 0 < self.min_keep <= 1:
            raise PrunedroidError(f"`min_keep` is a fraction of a layer's channels in (0, 1], got {self.min_keep}")
        if not 0 < self.tolerance < 1:
            raise PrunedroidError(f"`tolerance` is a fraction in (0, 1), got {self.tolerance}")

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> Budget | None:
        """From keywords, as values or as typed on a command line ("0.5"; "0.1,0.2,..." per group): exactly one
        amount (`ratio`, `layer_ratios`, `mac_reduction`, `latency_reduction`, `layer_channels`) and any of
        `allocation`, `round_to`, `min_keep`, `tolerance`; an option given as None is not given. None when no
        amount is given (the method may not need one, or has a default)."""
        given = {name: value for name, value in options.items() if value is not None}
        unknown = sorted(set(given) - set(AMOUNT_OPTIONS) - set(BUDGET_SETTINGS))
        if unknown:
            raise PrunedroidError(f"unknown budget option {unknown[0]!r}; known: "
                                  f"{', '.join([*AMOUNT_OPTIONS, *BUDGET_SETTINGS])}")
        amounts = [name for name in AMOUNT_OPTIONS if name in given]
        if not amounts:
            return None
        if len(amounts) > 1:
            raise PrunedroidError("give exactly one budget: `ratio`, `layer_ratios`, `mac_reduction` or "
                                  f"`latency_reduction` (got {', '.join(amounts)})")
        kind = AMOUNT_OPTIONS[amounts[0]]
        value: object = given[amounts[0]]
        element = dataclasses.fields(kind)[0].type
        if "tuple" in str(element):
            parts = value.split(",") if isinstance(value, str) else value
            if not isinstance(parts, (list, tuple)):
                raise PrunedroidError(f"`{kind.option}` takes one value per channel group, got {value!r}")
            each = "int" if "int" in str(element) else "float"
            value = tuple(parse_option(str(part), each, kind.option) for part in parts)
        else:
            value = parse_option(str(value), "float", kind.option)
        settings = {name: parse_option(str(given[name]), BUDGET_SETTINGS[name], name)
                    for name in BUDGET_SETTINGS if name in given}
        return cls(kind(value), **settings)  # type: ignore[arg-type]

    @classmethod
    def of(cls, **options: object) -> Budget:
        """Budget.of(mac_reduction=0.5, round_to=8): from_options, with an amount required."""
        budget = cls.from_options(options)
        if budget is None:
            raise PrunedroidError("give exactly one budget: `ratio`, `layer_ratios`, `mac_reduction` or "
                                  "`latency_reduction`")
        return budget

    @property
    def target(self) -> float:
        """The fraction to remove of what the budget measures (MACs, or predicted latency); only a MAC or latency
        target has one."""
        if isinstance(self.amount, (MacReduction, LatencyReduction)):
            return self.amount.fraction
        raise PrunedroidError("this budget sets channel counts, not a MAC or latency target to reach")

    @property
    def measure(self) -> str:
        return "latency" if isinstance(self.amount, LatencyReduction) else "MAC"

    def to_dict(self) -> dict:
        """The budget as reports record it: {"mac_reduction": 0.5, "tolerance": 0.01, "round_to": 1,
        "allocation": "uniform"}, with min_keep where an allocation uses it and candidates where a search does."""
        value = amount_value(self.amount)
        record = {self.amount.option: list(value) if isinstance(value, tuple) else value,
                  "tolerance": self.tolerance, "round_to": self.round_to, "allocation": self.allocation}
        if self.allocation == "search":
            record["candidates"] = self.candidates
        return record if self.allocation == "uniform" else {**record, "min_keep": self.min_keep}


# The budget's settings besides its amount, as typed: what Budget.from_options parses them as.
BUDGET_SETTINGS = {field.name: str(field.type) for field in dataclasses.fields(Budget) if field.name != "amount"}
BUDGET_OPTIONS = (*AMOUNT_OPTIONS, *BUDGET_SETTINGS)  # every keyword a budget is given by


def required_budget(method: str, budget: Budget | None, default: Budget | None = None) -> Budget:
    """The budget a method that cannot choose counts itself prunes to: the one given, else the caller's default."""
    chosen = budget or default
    if chosen is None:
        raise PrunedroidError(f"{method} needs a budget: `mac_reduction`, `ratio` or `layer_ratios`")
    return chosen


def rounded(kept: int, channels: int, step: int) -> int:
    """`kept` channels of a layer of `channels`, moved to the nearest multiple of `step` (at least `step`, at most
    `channels`: a layer no wider than one step is left whole)."""
    if channels <= step:
        return channels
    return min(channels, max(step, step * math.floor(kept / step + 0.5)))


def kept_counts(graph: ChannelGraph, budget: Budget) -> list[int]:
    """Channels each group keeps, each a multiple of budget.round_to (see `rounded`). A MAC target uses one
    removal ratio for every group (found by bisection), then trims one step of channels at a time from the groups
    with the most channels left until the target is met."""
    original, step = graph.channels, budget.round_to
    count = lambda c, r: rounded(max(1, c - math.floor(c * r + 0.5)), c, step)
    match budget.amount:
        case Ratio(fraction):
            return _prunes_something([count(c, fraction) for c in original], original, step)
        case LayerRatios(fractions):
            if len(fractions) != len(original):
                raise PrunedroidError(f"`layer_ratios` needs {len(original)} values (one per channel group), "
                                      f"got {len(fractions)}")
            return _prunes_something([c if r == 0 else count(c, r) for c, r in zip(original, fractions)], original,
                                     step)
        case LayerChannels(counts):
            if len(counts) != len(original) or not all(type(k) is int and 1 <= k <= c
                                                       for k, c in zip(counts, original)):
                raise PrunedroidError(f"layer channel counts {list(counts)} do not fit a model with {list(original)} "
                                      f"channels: one count per channel group, each in 1..its channels")
            return list(counts)
    target = budget.target
    most = graph.mac_reduction([min(c, step) for c in original])
    if target > most:
        raise PrunedroidError(f"a {target:.0%} MAC reduction cannot be reached: keeping {step} channel(s) per layer "
                            f"removes only {most:.1%}; ask for less" + (" or a smaller `round_to`" if step > 1 else "")
                            + graph.whole_note)
    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        if graph.mac_reduction([count(c, middle) for c in original]) <= target:
            low = middle
        else:
            high = middle
    # Of the layers that can lose a step, the one with the largest share of its channels left goes first: the
    # per-layer ratios stay as even as the step sizes allow.
    return trim_to_target(graph, [count(c, low) for c in original], budget, [1] * len(original),
                          lambda layer, counts: -counts[layer] / original[layer])


def _prunes_something(counts: list[int], original: Sequence[int], step: int) -> list[int]:
    """`counts`, unless every group keeps all its channels: a budget rounded away to nothing is refused, as an
    unreachable MAC target is."""
    if counts == list(original):
        raise PrunedroidError((f"`round_to` {step} rounds the budget away on this model" if step > 1 else
                               "the budget is too small for this model") + f": every group keeps all its channels "
                              f"(the widest has {max(original)}), so nothing would be pruned; "
                              + ("use a smaller `round_to`" if step > 1 else "ask for more"))
    return counts


def step_down(channels: int, step: int) -> int:
    """The next multiple of `step` below `channels` (0 when there is none)."""
    return step * ((channels - 1) // step)


def trim_to_target(graph: ChannelGraph, counts: Sequence[int], budget: Budget, floors: Sequence[int],
                   priority: Callable[[int, list[int]], float | tuple],
                   reduction: Callable[[list[int]], float] | None = None) -> list[int]:
    """Removes one step (budget.round_to channels) at a time from the layer with the lowest `priority(layer,
    counts)`, among the layers that stay at or above their floor and whose step keeps the reduction within the
    target's tolerance, until budget.target is met (within tolerance/2 below). Every allocation ends here.
    reduction(counts): the fraction removed of what the budget measures; MACs unless given (predicted latency)."""
    counts, step = list(counts), budget.round_to
    reduction = reduction or graph.mac_reduction
    target, tolerance = budget.target, budget.tolerance
    while (reached := reduction(counts)) < target - tolerance / 2:
        fits = [i for i, c in enumerate(counts) if 1 <= step_down(c, step) and floors[i] <= step_down(c, step)
                and reduction(counts[:i] + [step_down(c, step)] + counts[i + 1:]) <= target + tolerance]
        if not fits:
            break
        chosen = min(fits, key=lambda i: priority(i, counts))
        counts[chosen] = step_down(counts[chosen], step)
    if not abs(reached - target) <= tolerance:  # written so that a NaN reduction fails too
        raise PrunedroidError(f"could not reach a {target:.1%} {budget.measure} reduction within {tolerance:.1%} (got "
                            f"{reached:.1%})"
                            + (f"; channel steps of {step} are too coarse for this model: try a smaller `round_to`"
                               if step > 1 else "")
                            + ("" if budget.allocation == "uniform" else "; or lower `min_keep`") + graph.whole_note)
    return counts


def keep_top(scores: Sequence[torch.Tensor], counts: Sequence[int]) -> dict[int, list[int]]:
    """For each layer, the indices of its `counts[layer]` highest-scoring channels, in ascending order."""
    return {layer: sorted(torch.topk(layer_scores, k).indices.tolist())
            for layer, (layer_scores, k) in enumerate(zip(scores, counts))}
