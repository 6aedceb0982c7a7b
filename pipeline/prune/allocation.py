"""How many channels each layer keeps under a MAC target; the method then chooses which (keep_top, SCP's pairs,
k-means' clusters). Every allocation ends in budget.trim_to_target, one step of channels at a time:

uniform      one removal ratio for every layer (budget.kept_counts).
global       every channel of every layer ranked together by the method's own scores (channel_scores in
             pipeline.prune), each layer's scores divided by their mean so layers compare; the lowest-scoring step
             of channels goes first.
sensitivity  each layer pruned alone by the method at SENSITIVITY_RATIOS, BatchNorm re-measured and top-1 measured
             on held-out training images (never test images); a step goes from the layer whose predicted top-1 loss
             per MAC saved is the smallest (NetAdapt's and AMC's per-layer view, with a measured loss curve).
latency      the same loss curves, but the cost is measured latency (pipeline/prune/latency.py's lookup table per
             layer shape, onnxruntime on this machine) and the target a fraction of the predicted latency: a step
             goes from the layer whose predicted loss per millisecond saved is smallest (NetAdapt).

No layer goes below budget.min_keep of its channels under a non-uniform allocation.
"""
from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from pipeline import data as cifar
from pipeline.errors import PipelineError
from pipeline.files import atomic_path, read_json
from pipeline.models import VGG, VGGSpec
from pipeline.prune.budget import Budget, mac_reduction, step_down, trim_to_target
from pipeline.prune.latency import LatencyTable
from pipeline.train import evaluate, remeasure_batchnorm

SENSITIVITY_RATIOS = (0.25, 0.5, 0.75, 0.9)  # fractions of one layer's channels removed while measuring it
BATCHNORM_IMAGES = 1024  # held-out images the pruned model's BatchNorm statistics are re-measured on
SCORED_IMAGES = 2048  # the held-out images after those, whose top-1 is the sensitivity measure
LOOKAHEAD = 4  # steps down a layer the latency allocation looks for a saving (one step can cost more: SIMD widths)
Curve = list[tuple[int, float]]  # (kept channels, top-1 lost in points), from the whole layer down


def floors(spec: VGGSpec, budget: Budget) -> list[int]:
    """The fewest channels each layer may keep: budget.min_keep of it, rounded up to a multiple of the step."""
    step = budget.round_to
    return [c if c <= step else min(c, step * math.ceil(max(1, math.ceil(budget.min_keep * c)) / step))
            for c in spec.conv_channels]


def check_reachable(spec: VGGSpec, budget: Budget, reduction: Callable[[list[int]], float] | None = None) -> list[int]:
    """The floors, once the target is known to be reachable above them (else an error naming the fix).
    reduction: as in trim_to_target (MACs unless given)."""
    lowest = floors(spec, budget)
    most = (reduction or functools.partial(mac_reduction, spec))(lowest)
    if budget.target > most + budget.tolerance:
        raise PipelineError(f"a {budget.target:.0%} {budget.measure} reduction cannot be reached with every layer "
                            f"keeping at least {budget.min_keep:.0%} of its channels (at most {most:.1%}); lower "
                            f"--min-keep or ask for less")
    return lowest


def _saved(spec: VGGSpec, counts: list[int], layer: int, step: int) -> float:
    """Fraction of the model's MACs one step down in `layer` saves (its own and the next layer's input)."""
    fewer = counts[:layer] + [step_down(counts[layer], step)] + counts[layer + 1:]
    return mac_reduction(spec, fewer) - mac_reduction(spec, counts)


def global_counts(spec: VGGSpec, budget: Budget, scores: Sequence[torch.Tensor], normalization: str = "mean",
                  per_mac: bool = False) -> list[int]:
    """Kept channels per layer from per-channel scores ((C,) per layer, higher means keep).
    normalization: "mean" divides a layer's scores by their mean, "max" by their maximum, "none" leaves them;
    per_mac: a step's priority is its mean score divided by the MACs it saves, else its mean score alone.
    The defaults are what benchmarks/results/allocation_quick.md measured best (per-MAC priorities hollow out the
    high-resolution layers)."""
    scale = {"mean": lambda s: s.mean(), "max": lambda s: s.max(), "none": lambda s: torch.ones(())}[normalization]
    ordered = [torch.sort(s.double() / scale(s.double()).clamp_min(1e-12), descending=True).values for s in scores]
    lowest = check_reachable(spec, budget)

    def priority(layer: int, counts: list[int]) -> float:
        n = counts[layer]
        value = float(ordered[layer][step_down(n, budget.round_to):n].mean())
        return value / _saved(spec, counts, layer, budget.round_to) if per_mac else value

    return trim_to_target(spec, list(spec.conv_channels), budget, lowest, priority)


def predicted_loss(curve: Curve, kept: int) -> float:
    """Top-1 points lost at `kept` channels: linear between measured points, the last slope past the last one."""
    for (upper, upper_loss), (lower, lower_loss) in zip(curve, curve[1:]):
        if kept >= lower:
            return upper_loss + (lower_loss - upper_loss) * (upper - kept) / (upper - lower)
    (upper, upper_loss), (lower, lower_loss) = curve[-2], curve[-1]
    return lower_loss + (lower_loss - upper_loss) * (lower - kept) / (upper - lower)


def sensitivity_counts(spec: VGGSpec, budget: Budget, curves: Sequence[Curve]) -> list[int]:
    """Kept channels per layer from measured per-layer curves (see layer_sensitivity): the next step goes from the
    layer whose predicted extra loss per MAC saved is smallest (ties: the larger saving)."""
    lowest = check_reachable(spec, budget)

    def priority(layer: int, counts: list[int]) -> tuple[float, float]:
        n, step = counts[layer], budget.round_to
        extra = max(0.0, predicted_loss(curves[layer], step_down(n, step)) - predicted_loss(curves[layer], n))
        saved = _saved(spec, counts, layer, step)
        return extra / saved, -saved

    return trim_to_target(spec, list(spec.conv_channels), budget, lowest, priority)


def latency_saved(spec: VGGSpec, table: LatencyTable) -> Callable[[list[int]], float]:
    """counts -> the fraction of `spec`'s predicted latency those channel counts remove."""
    full = table.model_ms(spec, spec.conv_channels)
    return lambda counts: 1 - table.model_ms(spec, counts) / full


def latency_counts(spec: VGGSpec, budget: Budget, curves: Sequence[Curve], table: LatencyTable) -> list[int]:
    """Kept channels per layer meeting budget.latency_reduction of the table's predicted latency: the next step
    goes from the layer whose predicted extra loss per ms saved is smallest. A step that saves nothing (a count off
    the runtime's SIMD width can be slower) is judged by the best rate within LOOKAHEAD steps, so the search walks
    through it to the next faster count."""
    reduction = latency_saved(spec, table)
    lowest = check_reachable(spec, budget, reduction)

    def priority(layer: int, counts: list[int]) -> float:
        now, fewer, best = table.model_ms(spec, counts), counts[layer], math.inf
        for _ in range(LOOKAHEAD):
            fewer = step_down(fewer, budget.round_to)
            if fewer < max(1, lowest[layer]):
                break
            saved = now - table.model_ms(spec, counts[:layer] + [fewer] + counts[layer + 1:])
            extra = max(0.0, predicted_loss(curves[layer], fewer) - predicted_loss(curves[layer], counts[layer]))
            if saved > 0:
                best = min(best, extra / saved)
        return best

    return trim_to_target(spec, list(spec.conv_channels), budget, lowest, priority, reduction)


def _top1(model: VGG, bn_images: torch.Tensor, scored: cifar.Split) -> float:
    return 100 * evaluate(remeasure_batchnorm(model, bn_images), scored)["top1"]


def layer_sensitivity(model: VGG, cut: Callable[[Budget], VGG], holdout: cifar.Split) -> list[Curve]:
    """Per conv layer, top-1 points lost when `cut` (the method) prunes that layer alone to each of
    SENSITIVITY_RATIOS; BatchNorm re-measured on the first BATCHNORM_IMAGES held-out images and top-1 taken on the
    next SCORED_IMAGES, for the unpruned model the same way. Curves run from the whole layer (loss 0) down and never
    predict less loss for fewer channels."""
    if len(holdout) < 2:
        raise PipelineError("--allocation sensitivity and latency measure accuracy on held-out training images, but "
                            "the base model was trained with none held out; train it with --holdout (e.g. 5000)")
    bn_count = min(BATCHNORM_IMAGES, len(holdout) // 2)
    bn_images = holdout.images[:bn_count]
    scored = cifar.Split(holdout.images[bn_count:bn_count + SCORED_IMAGES],
                         holdout.labels[bn_count:bn_count + SCORED_IMAGES])
    reference = _top1(model, bn_images, scored)
    channels = model.spec.conv_channels
    curves = []
    for layer, width in enumerate(channels):
        curve, worst = [(width, 0.0)], 0.0
        for kept in sorted({max(1, width - round(width * r)) for r in SENSITIVITY_RATIOS} - {width}, reverse=True):
            layer_counts = tuple(kept if i == layer else c for i, c in enumerate(channels))
            worst = max(worst, reference - _top1(cut(Budget(layer_channels=layer_counts)), bn_images, scored))
            curve.append((kept, worst))
        curves.append(curve)
    return curves


def cached_curves(cache: Path | None, key: str, measure: Callable[[], list[Curve]]) -> list[Curve]:
    """`measure()`, or the curves stored under `key` in the JSON file `cache` (written there when new): the curves
    depend on the base model, the method and the held-out images, not on the MAC target."""
    stored = read_json(cache, "a cache of sensitivity curves") if cache is not None and cache.exists() else {}
    if not isinstance(stored, dict):
        raise PipelineError(f"{cache} is not a cache of sensitivity curves; delete it and they are measured again")
    if key not in stored:
        stored[key] = measure()
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache) as tmp:
                tmp.write_text(json.dumps(stored, indent=1) + "\n")
    return [[(int(kept), float(loss)) for kept, loss in curve] for curve in stored[key]]


def allocate(model: VGG, budget: Budget, scores: Callable[[], list[torch.Tensor]], cut: Callable[[Budget], VGG],
             holdout: cifar.Split | None, cache: Path | None = None, cache_key: str = "",
             latency_table: LatencyTable | None = None) -> tuple[list[int], dict]:
    """Kept channels per layer for a MAC- or latency-target budget, and what the allocation measured (for the
    report; the floor is in the budget's own entry).
    scores: the method's per-channel scores (global); cut: the method pruning to a layer_channels budget
    (sensitivity, latency); holdout: the base's held-out training images (sensitivity, latency); latency_table: the
    lookup table to read and fill (latency; saved when done)."""
    spec = model.spec
    if budget.allocation == "global":
        return global_counts(spec, budget, scores()), {"allocation": "global"}

    def curves() -> list[Curve]:
        if holdout is None:
            raise PipelineError(f"--allocation {budget.allocation} needs the base's held-out training images")
        return cached_curves(cache, cache_key, lambda: layer_sensitivity(model, cut, holdout))

    if budget.allocation == "sensitivity":
        measured = curves()
        return sensitivity_counts(spec, budget, measured), {"allocation": "sensitivity", "curves": measured}
    if budget.allocation == "latency":
        table = latency_table or LatencyTable.load(None)  # measured afresh, kept nowhere
        try:
            check_reachable(spec, budget, latency_saved(spec, table))  # a few layers' timings spare the curves
            measured = curves()
            counts = latency_counts(spec, budget, measured, table)
        finally:
            table.save()  # what was timed is kept even when the target turns out unreachable
        return counts, {"allocation": "latency", "curves": measured, "latency_table": str(table.path),
                        "predicted_ms": {"before": table.model_ms(spec, spec.conv_channels),
                                         "after": table.model_ms(spec, counts)},
                        "latency_runtime": table.where}
    raise PipelineError(f"allocation {budget.allocation!r} is not a per-layer search; use kept_counts")
