"""How much to prune, and turning per-channel scores into kept channels under that budget."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from prunedroid.errors import PrunedroidError
from prunedroid.options import option, parse_option
from prunedroid.pruning.groups import ChannelGraph

ALLOCATIONS = ("uniform", "global", "sensitivity", "latency")


@dataclass(frozen=True)
class Budget:
    """How much to prune: exactly one of ratio, layer_ratios, mac_reduction, latency_reduction (each field's help
    says what it is) and layer_channels (the channels each group keeps: what an allocation resolves a target to).
    A MAC or latency target is reached within `tolerance` (absolute); round_to suits SIMD kernels, which work on 4,
    8 or 16 channels at a time; allocations are in prunedroid/pruning/allocation.py."""

    ratio: float | None = option(None, "fraction of every channel group's channels to remove")
    layer_ratios: tuple[float, ...] | None = option(None, "comma-separated fraction per channel group (13 values for "
                                                          "VGG16, one per conv layer; 0 leaves a group whole)")
    mac_reduction: float | None = option(None, "fraction of MACs to remove, e.g. 0.5 (reached within 1%)")
    latency_reduction: float | None = option(None, "with --allocation latency: fraction of the predicted latency to "
                                                   "remove (the per-layer lookup table is kept in latency-table.json "
                                                   "beside the output folder)")
    layer_channels: tuple[int, ...] | None = None
    tolerance: float = 0.01
    round_to: int = option(1, "every pruned group keeps a multiple of this many channels, at least this many")
    allocation: str = option("uniform", "how --mac-reduction is shared among groups: uniform (one ratio), global "
                                        "(the method's channel scores ranked across groups) or sensitivity (measured "
                                        "accuracy loss per MAC); latency: accuracy loss per ms of measured layer "
                                        "latency, to a --latency-reduction")
    min_keep: float = option(0.1, "the fraction of a group's channels it never goes below with --allocation global/"
                                  "sensitivity/latency; with --method kmeans and no allocation, the floor of its "
                                  "automatic K (there 0.25 unless given)")

    def __post_init__(self) -> None:
        given = [name for name in ("ratio", "layer_ratios", "mac_reduction", "latency_reduction", "layer_channels")
                 if getattr(self, name) is not None]
        if len(given) != 1:
            raise PrunedroidError("give exactly one budget: --ratio, --layer-ratios, --mac-reduction or "
                                  "--latency-reduction" + (f" (got {', '.join(given)})" if given else ""))
        for value in tuple(v for v in (self.ratio, self.mac_reduction, self.latency_reduction) if v is not None):
            if not 0 < value < 1:
                raise PrunedroidError(f"--ratio, --mac-reduction and --latency-reduction must be in (0, 1), got "
                                      f"{value}; e.g. 0.5 removes half")
        for value in self.layer_ratios or ():
            if not 0 <= value < 1:
                raise PrunedroidError(f"each --layer-ratios value must be in [0, 1), got {value}; 0 leaves a layer "
                                    f"whole, 0.5 removes half its channels")
        if type(self.round_to) is not int or not 1 <= self.round_to <= 256:
            raise PrunedroidError(f"--round-to must be a whole number of channels in 1..256, got {self.round_to}")
        if self.allocation not in ALLOCATIONS:
            raise PrunedroidError(f"unknown --allocation {self.allocation!r}; choose one of {', '.join(ALLOCATIONS)}")
        if (self.allocation == "latency") != (self.latency_reduction is not None):
            raise PrunedroidError("--latency-reduction and --allocation latency go together: the latency allocation "
                                  "trims to a latency target, and only it measures latency")
        if self.allocation not in ("uniform", "latency") and self.mac_reduction is None:
            raise PrunedroidError(f"--allocation {self.allocation} shares a MAC target among layers: give "
                                  f"--mac-reduction, not --ratio/--layer-ratios (those fix each layer's share)")
        if not 0 < self.min_keep <= 1:
            raise PrunedroidError(f"--min-keep is a fraction of a layer's channels in (0, 1], got {self.min_keep}")
        if self.layer_ratios is not None and not any(self.layer_ratios):
            raise PrunedroidError("every --layer-ratios value is 0, so nothing would be pruned; give a layer a ratio "
                                  "above 0")

    @classmethod
    def from_options(cls, ratio: str | float | None = None, layer_ratios: str | None = None,
                     mac_reduction: str | float | None = None, round_to: str | int | None = None,
                     allocation: str | None = None, min_keep: str | float | None = None,
                     latency_reduction: str | float | None = None) -> Budget | None:
        """From command-line strings: --ratio 0.5, --layer-ratios 0.1,0.2,..., --mac-reduction 0.5, --round-to 8,
        --allocation global, --min-keep 0.1, --latency-reduction 0.5; None when no budget is given (the method may
        not need one, or has a default)."""
        if ratio is None and layer_ratios is None and mac_reduction is None and latency_reduction is None:
            return None
        number = lambda text, option: float(parse_option(str(text), "float", option))  # type: ignore[arg-type]
        return cls(ratio=None if ratio is None else number(ratio, "ratio"),
                   layer_ratios=None if layer_ratios is None else tuple(
                       number(part, "layer_ratios") for part in str(layer_ratios).split(",")),
                   mac_reduction=None if mac_reduction is None else number(mac_reduction, "mac_reduction"),
                   latency_reduction=None if latency_reduction is None else number(latency_reduction,
                                                                                   "latency_reduction"),
                   round_to=1 if round_to is None else int(parse_option(str(round_to), "int",  # type: ignore[arg-type]
                                                                        "round_to")),
                   allocation=allocation or "uniform",
                   min_keep=Budget.min_keep if min_keep is None else number(min_keep, "min_keep"))

    @property
    def target(self) -> float:
        """The fraction to remove of what the budget measures (MACs, or predicted latency); only a MAC or latency
        target has one."""
        target = self.latency_reduction if self.latency_reduction is not None else self.mac_reduction
        if target is None:
            raise PrunedroidError("this budget sets channel counts, not a MAC or latency target to reach")
        return target

    @property
    def measure(self) -> str:
        return "latency" if self.latency_reduction is not None else "MAC"

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()
                if v is not None and not (k == "min_keep" and self.allocation == "uniform")}


def required_budget(method: str, budget: Budget | None, default: Budget | None = None) -> Budget:
    """The budget a method that cannot choose counts itself prunes to: the one given, else the caller's default."""
    chosen = budget or default
    if chosen is None:
        raise PrunedroidError(f"{method} needs a budget: --mac-reduction, --ratio or --layer-ratios")
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
    if budget.ratio is not None:
        return [count(c, budget.ratio) for c in original]
    if budget.layer_ratios is not None:
        if len(budget.layer_ratios) != len(original):
            raise PrunedroidError(f"--layer-ratios needs {len(original)} values (one per channel group), "
                                  f"got {len(budget.layer_ratios)}")
        return [c if r == 0 else count(c, r) for c, r in zip(original, budget.layer_ratios)]
    if budget.layer_channels is not None:
        if len(budget.layer_channels) != len(original) or not all(
                type(k) is int and 1 <= k <= c for k, c in zip(budget.layer_channels, original)):
            raise PrunedroidError(f"layer channel counts {list(budget.layer_channels)} do not fit a model with "
                                  f"{list(original)} channels: one count per channel group, each in 1..its channels")
        return list(budget.layer_channels)
    target = budget.target
    most = graph.mac_reduction([min(c, step) for c in original])
    if target > most:
        raise PrunedroidError(f"a {target:.0%} MAC reduction cannot be reached: keeping {step} channel(s) per layer "
                            f"removes only {most:.1%}; ask for less" + (" or a smaller --round-to" if step > 1 else ""))
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
                            + (f"; channel steps of {step} are too coarse for this model: try a smaller --round-to"
                               if step > 1 else "")
                            + ("" if budget.allocation == "uniform" else "; or lower --min-keep"))
    return counts


def keep_top(scores: Sequence[torch.Tensor], counts: Sequence[int]) -> dict[int, list[int]]:
    """For each layer, the indices of its `counts[layer]` highest-scoring channels, in ascending order."""
    return {layer: sorted(torch.topk(layer_scores, k).indices.tolist())
            for layer, (layer_scores, k) in enumerate(zip(scores, counts))}
