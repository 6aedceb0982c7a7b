"""Pruning this project's models and checkpoints: the pruning library fed with CIFAR-10's held-out images, an
evaluation on them, a sensitivity cache and a latency table (the library itself knows none of these).

Held-out images are the tail of the training split the base never trained on; test images are never used to choose.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from prunedroid import data as cifar
from prunedroid.errors import PrunedroidError
from prunedroid.files import atomic_path, read_json
from prunedroid.measure.latency import APP_LATENCY, LatencyOptions
from prunedroid.models import arch_of, example_input
from prunedroid.pruning import Budget, Calibration, Method, prune
from prunedroid.training.checkpoint import Checkpoint
from prunedroid.training.train import evaluate, remeasure_batchnorm

BATCHNORM_IMAGES = 1024  # held-out images a pruned model's BatchNorm statistics are re-measured on
SCORED_IMAGES = 2048  # the held-out images after those, whose top-1 is the sensitivity measure


def calibration(evaluation: cifar.Split | None) -> Calibration | None:
    """The method's evaluation images, normalised as the model takes them, with their labels (one batch; methods
    re-batch)."""
    if evaluation is None:
        return None
    return [(cifar.normalize(evaluation.images), evaluation.labels)]


def held_out_top1(holdout: cifar.Split) -> Callable[[nn.Module], float]:
    """model -> top-1 (%) on held-out images after re-measuring its BatchNorm: statistics on the first
    BATCHNORM_IMAGES, top-1 on the next SCORED_IMAGES (what a sensitivity curve measures)."""
    if len(holdout) < 2:
        raise PrunedroidError("--allocation sensitivity and latency measure accuracy on held-out training images, "
                              "but the base model was trained with none held out; train it with --holdout (e.g. 5000)")
    bn_count = min(BATCHNORM_IMAGES, len(holdout) // 2)
    bn_images = holdout.images[:bn_count]
    scored = cifar.Split(holdout.images[bn_count:bn_count + SCORED_IMAGES],
                         holdout.labels[bn_count:bn_count + SCORED_IMAGES])
    return lambda model: 100 * evaluate(remeasure_batchnorm(model, bn_images), scored)["top1"]


def cached(cache: Path | None, key: str, measure: Callable[[], Any]) -> Any:
    """`measure()`, or what is stored under `key` in the JSON file `cache` (written there as soon as it is new):
    sensitivity curves and search candidates' scores depend on the base model, the method and the held-out images,
    not on the target, and a search interrupted part-way resumes with the candidates it scored."""
    stored = _read_cache(cache)
    if key not in stored:
        value = measure()
        if cache is not None:
            # Read again: another run sharing the cache may have stored its measurements while this one measured.
            stored = {**_read_cache(cache), key: value}
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache) as tmp:
                tmp.write_text(json.dumps(stored, indent=1) + "\n")
        stored[key] = value
    return stored[key]


def _read_cache(cache: Path | None) -> dict:
    stored = read_json(cache, "a cache of sensitivity curves") if cache is not None and cache.exists() else {}
    if not isinstance(stored, dict):
        raise PrunedroidError(f"{cache} is not a cache of sensitivity curves; delete it and they are measured again")
    return stored


def prune_model(model: nn.Module, method: Method, budget: Budget | None, seed: int = 0,
                evaluation: cifar.Split | None = None, holdout: cifar.Split | None = None,
                sensitivity_cache: Path | None = None, latency: LatencyOptions = APP_LATENCY,
                latency_folder: Path | None = None) -> tuple[nn.Module, dict]:
    """The pruned model and the library's report (see prunedroid.pruning.prune).

    evaluation: labelled held-out images, uint8 (n, 3, 32, 32), that data-driven methods analyse (SCP's feature
    maps, Taylor importance's gradients); see flow.evaluation_set. holdout: all the base's held-out training images,
    which --allocation sensitivity and latency measure top-1 on; sensitivity_cache: a JSON file keeping their
    curves for the next target (keyed by method, options, seed and held-out count: one file per base model);
    latency: where --allocation latency takes its layer timings from (a runtime here, or a phone's table);
    latency_folder: where this machine's table for that runtime is kept and extended (None: measured afresh)."""
    example = example_input()
    allocation = budget.allocation if budget is not None else "uniform"
    measures = allocation in ("sensitivity", "latency", "search")
    if measures and holdout is None:
        raise PrunedroidError(f"--allocation {allocation} needs the base's held-out training images")
    table = latency.table(latency_folder) if allocation == "latency" else None
    count = 0 if holdout is None else len(holdout)
    try:
        result = prune(model, example, method, budget, calibration=calibration(evaluation), seed=seed,
                       evaluate=held_out_top1(holdout) if measures and holdout is not None else None,
                       model_ms=None if table is None else table.model_ms,
                       remember=lambda key, measure: cached(sensitivity_cache, json.dumps([*json.loads(key), count]),
                                                            measure))
    finally:
        if table is not None:
            table.save()  # what was timed is kept even when the target turns out unreachable
    if table is not None:
        result.report.update(latency_table=str(latency.latency_table or table.path), latency_runtime=table.where)
    return result.model, result.report


def prune_checkpoint(checkpoint: Checkpoint, method: Method, budget: Budget | None, seed: int = 0,
                     evaluation: cifar.Split | None = None, holdout: cifar.Split | None = None,
                     sensitivity_cache: Path | None = None, latency: LatencyOptions = APP_LATENCY,
                     latency_folder: Path | None = None) -> Checkpoint:
    """A checkpoint of the pruned model (not yet fine-tuned: epoch 0, no optimiser state), carrying the parent's
    recipe and data statistics and a `pruning` report. Pruning a pruned checkpoint again keeps the earlier report
    (`previous`) and states the reductions against the unpruned model the chain started from (`original`)."""
    pruned, report = prune_model(checkpoint.model(), method, budget, seed, evaluation, holdout,
                                 sensitivity_cache, latency, latency_folder)
    report["parent_test_top1"] = checkpoint.test_top1
    previous = checkpoint.pruning
    if previous:
        original = previous.get("original") or {"macs": previous.get("macs_before"),
                                                "params": previous.get("params_before")}
        if not all(type(original.get(key)) is int and original[key] > 0 for key in ("macs", "params")):
            raise PrunedroidError("the checkpoint's pruning record has no MACs and parameters of the model it was "
                                  "pruned from: the file was edited; prune the unpruned base instead")
        report.update(previous=previous, original=original,
                      mac_reduction_from_original=1 - report["macs_after"] / original["macs"],
                      param_reduction_from_original=1 - report["params_after"] / original["params"])
    return Checkpoint(arch=arch_of(pruned), state_dict=pruned.state_dict(), recipe=checkpoint.recipe,
                      data=checkpoint.data, seed=seed, pruning=report,
                      cost={"macs": report["macs_after"], "params": report["params_after"]})
