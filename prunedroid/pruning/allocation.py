"""How many channels each group keeps under a MAC or latency target; the method then chooses which (keep_top, SCP's
pairs, k-means' clusters). Every allocation ends in budget.trim_to_target, one step of channels at a time:

uniform      one removal ratio for every group (budget.kept_counts).
global       every channel of every group ranked together by the method's own scores, each group's scores divided
             by their mean so groups compare; the lowest-scoring step of channels goes first.
sensitivity  each group pruned alone by the method at SENSITIVITY_RATIOS and the model's accuracy measured by the
             caller's `evaluate` (held-out images, never test images); a step goes from the group whose predicted loss
             per MAC saved is the smallest (NetAdapt's and AMC's per-layer view, with a measured loss curve).
latency      the same loss curves, but the cost is the caller's predicted latency (a lookup table per layer shape)
             and the target a fraction of it: a step goes from the group whose predicted loss per millisecond saved
             is smallest (NetAdapt).
search       budget.candidates whole allocations meeting the target, each pruned by the method and scored by the
             caller's `evaluate` (held-out top-1 after re-measuring BatchNorm: EagleEye's adaptive-BN evaluation,
             Li et al., ECCV 2020); the best is kept. The candidates interact as the real model does, which the
             one-group-at-a-time curves above cannot see.

No group goes below budget.min_keep of its channels under a non-uniform allocation.
"""
from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Sequence

import torch
from torch import nn

from prunedroid.errors import PrunedroidError
from prunedroid.pruning.budget import Budget, LayerChannels, step_down, trim_to_target
from prunedroid.pruning.groups import ChannelGraph

SENSITIVITY_RATIOS = (0.25, 0.5, 0.75, 0.9)  # fractions of one group's channels removed while measuring it
LOOKAHEAD = 4  # steps down a layer the latency allocation looks for a saving (one step can cost more: SIMD widths)
Curve = list[tuple[int, float]]  # (kept channels, accuracy lost in points), from the whole group down
PredictMs = Callable[[Sequence[int]], float]  # channels per group -> predicted batch-1 latency (ms)
SEARCH_SPREAD = 3.0  # a candidate's group weights are log-uniform in [1/SPREAD, SPREAD]: cut shares differ up to 9x


def floors(graph: ChannelGraph, budget: Budget) -> list[int]:
    """The fewest channels each layer may keep: budget.min_keep of it, rounded up to a multiple of the step."""
    step = budget.round_to
    return [c if c <= step else min(c, step * math.ceil(max(1, math.ceil(budget.min_keep * c)) / step))
            for c in graph.channels]


def reachable_counts(graph: ChannelGraph, budget: Budget) -> list[list[int]]:
    """Per group, every channel count a search under `budget` can give it (largest first): the whole group, then
    each step of budget.round_to down to its floor."""
    counts = []
    for channels, lowest in zip(graph.channels, floors(graph, budget)):
        values = [channels]
        while lowest <= step_down(values[-1], budget.round_to) >= 1:
            values.append(step_down(values[-1], budget.round_to))
        counts.append(values)
    return counts


def check_reachable(graph: ChannelGraph, budget: Budget,
                    reduction: Callable[[list[int]], float] | None = None) -> list[int]:
    """The floors, once the target is known to be reachable above them (else an error naming the fix).
    reduction: as in trim_to_target (MACs unless given)."""
    lowest = floors(graph, budget)
    most = (reduction or graph.mac_reduction)(lowest)
    if budget.target > most + budget.tolerance:
        rounded = f" and a multiple of {budget.round_to}" if budget.round_to > 1 else ""
        fix = "lower `min_keep`" + (" or `round_to`" if rounded else "")
        raise PrunedroidError(f"a {budget.target:.0%} {budget.measure} reduction cannot be reached with every layer "
                              f"keeping at least {budget.min_keep:.0%} of its channels{rounded} (at most {most:.1%}); "
                              f"{fix}, or ask for less" + graph.whole_note)
    return lowest


def _saved(graph: ChannelGraph, counts: list[int], layer: int, step: int) -> float:
    """Fraction of the model's MACs one step down in group `layer` saves (its producers' and consumers')."""
    fewer = counts[:layer] + [step_down(counts[layer], step)] + counts[layer + 1:]
    return graph.mac_reduction(fewer) - graph.mac_reduction(counts)


def global_counts(graph: ChannelGraph, budget: Budget, scores: Sequence[torch.Tensor], normalization: str = "mean",
                  per_mac: bool = False) -> list[int]:
    """Kept channels per layer from per-channel scores ((C,) per layer, higher means keep).
    normalization: "mean" divides a layer's scores by their mean, "max" by their maximum, "none" leaves them;
    per_mac: a step's priority is its mean score divided by the MACs it saves, else its mean score alone.
    The defaults are what benchmarks/archive/results/allocation_quick.md measured best (per-MAC priorities hollow out
    the high-resolution layers)."""
    scale = {"mean": lambda s: s.mean(), "max": lambda s: s.max(), "none": lambda s: torch.ones(())}[normalization]
    ordered = [torch.sort(s.double() / scale(s.double()).clamp_min(1e-12), descending=True).values for s in scores]
    lowest = check_reachable(graph, budget)

    def priority(layer: int, counts: list[int]) -> float:
        n = counts[layer]
        value = float(ordered[layer][step_down(n, budget.round_to):n].mean())
        return value / _saved(graph, counts, layer, budget.round_to) if per_mac else value

    return trim_to_target(graph, list(graph.channels), budget, lowest, priority)


def predicted_loss(curve: Curve, kept: int) -> float:
    """Top-1 points lost at `kept` channels: linear between measured points, the last slope past the last one."""
    for (upper, upper_loss), (lower, lower_loss) in zip(curve, curve[1:]):
        if kept >= lower:
            return upper_loss + (lower_loss - upper_loss) * (upper - kept) / (upper - lower)
    (upper, upper_loss), (lower, lower_loss) = curve[-2], curve[-1]
    return lower_loss + (lower_loss - upper_loss) * (lower - kept) / (upper - lower)


def sensitivity_counts(graph: ChannelGraph, budget: Budget, curves: Sequence[Curve]) -> list[int]:
    """Kept channels per layer from measured per-layer curves (see layer_sensitivity): the next step goes from the
    layer whose predicted extra loss per MAC saved is smallest (ties: the larger saving)."""
    lowest = check_reachable(graph, budget)

    def priority(layer: int, counts: list[int]) -> tuple[float, float]:
        n, step = counts[layer], budget.round_to
        extra = max(0.0, predicted_loss(curves[layer], step_down(n, step)) - predicted_loss(curves[layer], n))
        saved = _saved(graph, counts, layer, step)
        return extra / saved, -saved

    return trim_to_target(graph, list(graph.channels), budget, lowest, priority)


def latency_saved(graph: ChannelGraph, predict_ms: PredictMs) -> Callable[[list[int]], float]:
    """counts -> the fraction of the model's predicted latency those channel counts remove."""
    full = predict_ms(graph.channels)
    return lambda counts: 1 - predict_ms(counts) / full


def latency_counts(graph: ChannelGraph, budget: Budget, curves: Sequence[Curve], predict_ms: PredictMs) -> list[int]:
    """Kept channels per group meeting the budget's latency target: the next step goes from
    the group whose predicted extra loss per ms saved is smallest. A step that saves nothing (a count off the
    runtime's SIMD width can be slower) is judged by the best rate within LOOKAHEAD steps, so the search walks
    through it to the next faster count."""
    reduction = latency_saved(graph, predict_ms)
    lowest = check_reachable(graph, budget, reduction)

    def priority(layer: int, counts: list[int]) -> float:
        now, fewer, best = predict_ms(counts), counts[layer], math.inf
        for _ in range(LOOKAHEAD):
            fewer = step_down(fewer, budget.round_to)
            if fewer < max(1, lowest[layer]):
                break
            saved = now - predict_ms(counts[:layer] + [fewer] + counts[layer + 1:])
            extra = max(0.0, predicted_loss(curves[layer], fewer) - predicted_loss(curves[layer], counts[layer]))
            if saved > 0:
                best = min(best, extra / saved)
        return best

    return trim_to_target(graph, list(graph.channels), budget, lowest, priority, reduction)


def layer_sensitivity(graph: ChannelGraph, model: nn.Module, cut: Callable[[Budget], nn.Module],
                      evaluate: Callable[[nn.Module], float]) -> list[Curve]:
    """Per group, accuracy points lost (`evaluate`: model -> accuracy in percent, on held-out data; it may
    re-measure BatchNorm first) when `cut` (the method) prunes that group alone to each of SENSITIVITY_RATIOS,
    against the unpruned model measured the same way. Curves run from the whole group (loss 0) down and never
    predict less loss for fewer channels."""
    reference = evaluate(model)
    channels = graph.channels
    curves = []
    for layer, width in enumerate(channels):
        curve, worst = [(width, 0.0)], 0.0
        for kept in sorted({max(1, width - round(width * r)) for r in SENSITIVITY_RATIOS} - {width}, reverse=True):
            layer_counts = tuple(kept if i == layer else c for i, c in enumerate(channels))
            worst = max(worst, reference - evaluate(cut(Budget(LayerChannels(layer_counts)))))
            curve.append((kept, worst))
        curves.append(curve)
    return curves


def _weighted_loss(graph: ChannelGraph, weights: list[float], group: int, counts: list[int]) -> float:
    """A search candidate's priority: its weight for `group` times the fraction of the group's channels gone."""
    return weights[group] * (1 - counts[group] / graph.channels[group])


def search_candidates(graph: ChannelGraph, budget: Budget, seed: int) -> list[list[int]]:
    """budget.candidates distinct channel counts per group, each meeting the budget's MAC target within its tolerance,
    rounding and floors. Each candidate weighs its groups (all 1 for the first, which comes out near-uniform;
    log-uniform in [1/SEARCH_SPREAD, SEARCH_SPREAD] from `seed` for the others) and removes a step at a time from
    the group whose weight times the fraction it has lost is smallest, so a light group loses more. Fewer than asked
    when the target leaves fewer distinct allocations (draws stop after 20 times the number asked)."""
    lowest = check_reachable(graph, budget)
    draw = random.Random(seed)
    found: list[list[int]] = []
    for attempt in range(20 * budget.candidates):
        if len(found) == budget.candidates:
            break
        weights = [1.0 if attempt == 0 else SEARCH_SPREAD ** draw.uniform(-1, 1) for _ in graph.channels]
        try:
            counts = trim_to_target(graph, list(graph.channels), budget, lowest,
                                    functools.partial(_weighted_loss, graph, weights))
        except PrunedroidError:
            if attempt == 0:  # even evenly shared, the target is out of reach: as for every other allocation
                raise
            continue  # these weights strand the target between two steps: draw others
        if counts not in found:
            found.append(counts)
    return found


def search_counts(graph: ChannelGraph, budget: Budget, score: Callable[[list[int]], float],
                  seed: int) -> tuple[int, list[dict]]:
    """Every one of search_candidates with its `score` (channel counts -> held-out accuracy of the model pruned to
    them, higher is better), in the order drawn, and the index of the best (the first of equals)."""
    scored = [{"channels": counts, "score": score(counts)} for counts in search_candidates(graph, budget, seed)]
    return max(range(len(scored)), key=lambda index: (scored[index]["score"], -index)), scored


def allocate(graph: ChannelGraph, budget: Budget, scores: Callable[[], list[torch.Tensor]],
             curves: Callable[[], list[Curve]] | None = None,
             predict_ms: PredictMs | None = None,
             score: Callable[[list[int]], float] | None = None, seed: int = 0) -> tuple[list[int], dict]:
    """Kept channels per group for a MAC- or latency-target budget, and what the allocation measured (for the
    report; the floor is in the budget's own entry).
    scores: the method's per-channel scores (global); curves: the measured sensitivity curves, e.g. layer_sensitivity
    (sensitivity, latency); predict_ms: predicted latency of channel counts (latency); score: held-out accuracy of
    the model pruned to channel counts (search, which draws its candidates from `seed`)."""
    if budget.allocation == "global":
        return global_counts(graph, budget, scores()), {"allocation": "global"}
    if budget.allocation == "search":
        if score is None:
            raise PrunedroidError("allocation 'search' scores candidates: give an evaluation (held-out data) to "
                                  "score them on")
        chosen, candidates = search_counts(graph, budget, score, seed)
        return candidates[chosen]["channels"], {"allocation": "search", "candidates": candidates, "chosen": chosen}
    if curves is None:
        raise PrunedroidError(f"allocation {budget.allocation!r} measures accuracy: give an evaluation (held-out "
                              f"data) to measure it on")
    if budget.allocation == "sensitivity":
        measured = curves()
        return sensitivity_counts(graph, budget, measured), {"allocation": "sensitivity", "curves": measured}
    if budget.allocation == "latency":
        if predict_ms is None:
            raise PrunedroidError("allocation 'latency' needs a latency prediction (a lookup table of layer shapes)")
        check_reachable(graph, budget, latency_saved(graph, predict_ms))  # a few layers' timings spare the curves
        measured = curves()
        counts = latency_counts(graph, budget, measured, predict_ms)
        return counts, {"allocation": "latency", "curves": measured,
                        "predicted_ms": {"before": predict_ms(graph.channels), "after": predict_ms(counts)}}
    raise PrunedroidError(f"allocation {budget.allocation!r} is not a per-group search; use kept_counts")
