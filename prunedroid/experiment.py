"""The experiment layer: what the scripts under benchmarks/ share. One base checkpoint, and each method judged the
same way - test top-1 right after pruning, after re-measuring BatchNorm on the same evaluation images, and after one
identical short fine-tune; paired differences and their tables; programs timed in separate processes and their
instructions counted (prunedroid.measure.callgrind); this module is also those processes' worker (`python -m`).

Cells are keyed by name and kept in <out>.json as soon as they are measured, so an interrupted run resumes without
redoing them; fine-tuned checkpoints go under `work` (and resume mid-fine-tune too).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunedroid import data as cifar
from prunedroid.deploy import pte
from prunedroid.deploy.export import export_checkpoint, fold_batchnorm
from prunedroid.deploy.formats import FORMATS, onnx_session, write_onnx
from prunedroid.errors import PrunedroidError
from prunedroid.files import file_sha256
from prunedroid.flow import evaluation_set
from prunedroid.measure.bench import benchmark, interleaved_latencies_ms, paired_difference
from prunedroid.measure.callgrind import count_calls, count_instructions
from prunedroid.measure.latency import RUNTIMES, LatencyOptions
from prunedroid.measure.report import command_line, markdown_table, write_results
from prunedroid.models import MODELS, build_model
from prunedroid.pruned import BATCHNORM_IMAGES, SCORED_IMAGES, prune_checkpoint, prune_model
from prunedroid.pruning import Budget, Method, SCPConfig, method_name
from prunedroid.training.checkpoint import Checkpoint, weights_sha256
from prunedroid.training.train import CHECKPOINT_NAME, TrainConfig, evaluate, make_config, remeasure_batchnorm, train

PROGRAM_RUNS = 200  # timed batch-1 calls per program and process, after PROGRAM_WARMUP untimed ones
PROGRAM_WARMUP = 20
COUNTED_CALLS = 3  # under callgrind, per program: the count repeats to within 0.05% between processes
COUNT_WARMUP = 2
WORKER = "prunedroid.experiment"  # this module, run by the timing and counting processes


def resumed(previous: dict) -> dict:
    """A results payload read back for a rerun to add to: everything it holds (cells, timings, choices - a rerun
    redoes only what changed) but the one command and machine, with this command appended to its `commands`."""
    commands = previous.get("commands", [previous["command"]] if "command" in previous else [])
    if command_line() not in commands[-1:]:
        commands.append(command_line())
    return {**{key: value for key, value in previous.items() if key not in ("command", "machine")},
            "commands": commands}


def arguments(description: str, out: str, work: str | None = None) -> argparse.ArgumentParser:
    """The options every pruning benchmark takes; a script adds its own. `work`: where fine-tunes go, for a
    script that fine-tunes (it also gets --finetune-preset); None for one that does not."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="runs/quick/checkpoint.pt", help="trained base checkpoint")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=out, help="results stem (.json, .md)")
    if work is not None:
        parser.add_argument("--finetune-preset", default="quick", help="whose fine-tuning recipe every cell gets")
        parser.add_argument("--work", default=work, help="fine-tuned checkpoints")
        parser.add_argument("--distill-weight", default=None, help="fine-tune distilling from the base (0..1)")
    parser.add_argument("--latency-runtime", default="onnxruntime", choices=list(RUNTIMES),
                        help="the runtime --allocation latency cells time layers in (default onnxruntime: the one the "
                             "committed frontier results were measured with)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for pruning, evaluation and fine-tuning (default: torch's choice); 1 lets "
                             "two jobs share 2 cores without oversubscribing them")
    return parser


@dataclass
class Bench:
    base_path: Path
    base_checkpoint: Checkpoint
    base: nn.Module
    data: cifar.Cifar10
    finetune_config: TrainConfig
    out: Path
    work: Path
    payload: dict
    correct: dict = dataclasses.field(default_factory=dict)  # (key, seed, split) -> bool (N,): models evaluated once
    latency_runtime: str = "onnxruntime"

    @classmethod
    def open(cls, base: str, out: str, work: str, finetune_preset: str = "quick", data_dir: str | None = None,
             threads: int | None = None, distill_weight: str | None = None,
             latency_runtime: str = "onnxruntime") -> Bench:
        """The base, CIFAR-10 (holding out the images the base held out) and any cells and paired differences already
        in <out>.json."""
        if threads:
            torch.set_num_threads(threads)
        checkpoint = Checkpoint.load(base)
        data = cifar.load_cifar10(data_dir, holdout=checkpoint.held_out_images)
        model = checkpoint.model()
        # The recipe's width is the base's: a fine-tune trains the model it is given, whatever the preset's width.
        finetune_config = make_config(finetune_preset, {"threads": threads, "width": checkpoint.recipe["width"],
                                                        "distill_weight": distill_weight}, finetune=True)
        results = Path(out).with_suffix(".json")
        previous = json.loads(results.read_text()) if results.exists() else {}
        sha256 = file_sha256(Path(base))
        if previous and previous["base"]["sha256"] != sha256:
            raise PrunedroidError(f"{results} holds cells of another base model ({previous['base']['checkpoint']}); "
                                  f"pass another --out, or delete it to start over")
        payload = {**resumed(previous),
                   "base": {"checkpoint": base, "sha256": sha256,
                            "weights_sha256": weights_sha256(checkpoint.state_dict),
                            "width": checkpoint.recipe["width"], "epochs": checkpoint.epoch,
                            "arch": checkpoint.arch,
                            "test_top1": evaluate(model, data.test)["top1"]},
                   "finetune": dataclasses.asdict(finetune_config), "cells": previous.get("cells", {}),
                   "paired": previous.get("paired", {})}
        return cls(Path(base), checkpoint, model, data, finetune_config, Path(out), Path(work), payload,
                   latency_runtime=latency_runtime)

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> Bench:
        return cls.open(args.base, args.out, args.work, args.finetune_preset, args.data_dir, args.threads,
                        args.distill_weight, args.latency_runtime)

    @property
    def cells(self) -> dict[str, dict]:
        return self.payload["cells"]

    @property
    def unused_holdout(self) -> cifar.Split:
        """The held-out training images past the first SCPConfig().eval_images, which SCP and the other data-driven
        methods analyse: an independent sample, and what a benchmark may choose by (never test images)."""
        skip = SCPConfig().eval_images
        return cifar.Split(self.data.holdout.images[skip:], self.data.holdout.labels[skip:])

    @property
    def unseen_holdout(self) -> cifar.Split:
        """The held-out training images past those sensitivity allocation measures on (BatchNorm, then scoring;
        SCP's lie inside them): what a benchmark comparing sensitivity-allocated models chooses by."""
        skip = BATCHNORM_IMAGES + SCORED_IMAGES
        return cifar.Split(self.data.holdout.images[skip:], self.data.holdout.labels[skip:])

    @property
    def judged_splits(self) -> dict[str, cifar.Split]:
        """The images a model is judged on against the base: the test set, and the held-out images nothing trained
        on or chose by (unseen_holdout)."""
        return {"test": self.data.test, "unseen": self.unseen_holdout}

    def base_correct(self, split_name: str) -> torch.Tensor:
        """Which images of judged_splits[split_name] the base gets right: bool (1, N), evaluated once."""
        key = ("<base>", 0, split_name)  # no cell's name: cells are keyed by target, method or allocation
        if key not in self.correct:
            self.correct[key] = evaluate(self.base, self.judged_splits[split_name], per_image=True)["correct"]
        return self.correct[key][None]

    def base_top1(self, split_name: str) -> float:
        return self.base_correct(split_name).float().mean().item()

    def against_base(self, tables: dict[str, torch.Tensor]) -> dict:
        """Models judged against the base: `tables` holds, per judged split, bool (runs, N) - which images each run
        (a fine-tune seed) gets right. Returns each run's top-1 ("per_seed") and the paired difference to the base
        over images and runs ("vs_base", prunedroid.measure.bench.paired_difference with over_runs)."""
        return {"per_seed": {name: [row.float().mean().item() for row in table] for name, table in tables.items()},
                "vs_base": {name: paired_difference(table, self.base_correct(name), over_runs=True)
                            for name, table in tables.items()}}

    def pruning_data(self, method: Method, latency_runtime: str | None = None) -> dict:
        """prune_model()'s data arguments: the method's evaluation images, the held-out images a sensitivity allocation
        measures on, and its curves' cache under `work` (one file per base: the curves do not depend on the
        target), and the latency allocation's lookup table there (one per machine and runtime: `latency_runtime`,
        else the bench's)."""
        runtime = latency_runtime or self.latency_runtime
        return {"evaluation": evaluation_set(method, self.data.holdout), "holdout": self.data.holdout,
                "sensitivity_cache": self.work / f"sensitivity-{self.payload['base']['sha256'][:12]}.json",
                "latency": LatencyOptions(runtime), "latency_folder": self.work}

    def cell_pruning_data(self, key: str, method: Method) -> dict:
        """pruning_data for a measured cell, in the latency runtime it was pruned with."""
        return self.pruning_data(method, self.cells[key].get("latency_runtime"))

    def measure(self, key: str, method: Method, budget: Budget | None, seed: int = 0, **extra: object) -> dict:
        """Prunes the base (unless `key` is done): MACs, params, seconds, top-1 pruned and with BatchNorm
        re-measured on the first SCPConfig().eval_images held-out images (what SCP itself sees). A `latency_runtime`
        among `extra` is the runtime a latency budget is timed in for this cell."""
        if key not in self.cells:
            started = time.perf_counter()
            runtime = extra.get("latency_runtime")
            pruned, report = prune_model(self.base, method, budget, seed,
                                         **self.pruning_data(method, runtime if isinstance(runtime, str) else None))
            seconds = time.perf_counter() - started
            calibration = self.data.holdout.head(SCPConfig().eval_images).images  # what SCP itself sees
            self.cells[key] = {**extra, "method": method_name(method), "options": report["options"],
                               "budget": report["budget"], "mac_reduction": report["mac_reduction"],
                               "param_reduction": report["param_reduction"], "params": report["params_after"],
                               "channels": [row["channels_after"] for row in report["layers"]],
                               "prune_seconds": round(seconds, 2),
                               "top1_pruned": evaluate(pruned, self.data.test)["top1"],
                               # What a benchmark may choose by: images neither the base nor any method saw.
                               "top1_pruned_unused_holdout": evaluate(pruned, self.unused_holdout)["top1"]
                               if len(self.unused_holdout) else None,
                               "top1_recalibrated": evaluate(remeasure_batchnorm(pruned, calibration),
                                                             self.data.test)["top1"]}
            print(key, {k: v for k, v in self.cells[key].items() if k.startswith("top1")}, flush=True)
        return self.cells[key]

    def finetune(self, key: str, method: Method, budget: Budget | None, seed: int = 0,
                 finetune_seed: int | None = None) -> dict:
        """The identical short fine-tune from the pruned model (unless done): top1_finetuned in the cell, and
        finetune_seconds, the training time of its epochs (s, evaluation between epochs not counted); with a
        `finetune_seed` other than the recipe's, the same recipe under that seed, in top1_finetuned_seeds[seed] -
        how far one fine-tune's top-1 moves with its seed alone."""
        cell = self.cells[key]
        config = dataclasses.replace(self.finetune_config, seed=self.finetune_config.seed if finetune_seed is None
                                     else finetune_seed)
        recipe = config == self.finetune_config
        if (recipe and "top1_finetuned" in cell) or str(config.seed) in cell.get("top1_finetuned_seeds", {}):
            return cell
        pruned = prune_checkpoint(self.base_checkpoint, method, budget, seed, **self.cell_pruning_data(key, method))
        folder = self.finetuned_folder(key, None if recipe else config.seed)
        finetuned = train(config, self.data, folder, resume=True, progress=False, init=pruned,
                          teacher=self.base_path if config.distill_weight else None)
        top1 = evaluate(finetuned.model(), self.data.test)["top1"]
        if recipe:
            cell["top1_finetuned"] = top1
            # Summed from the epochs' own times: true of a fine-tune resumed here, or finished by another process
            # sharing `work`, where the wall time of this call is not.
            cell["finetune_seconds"] = round(sum(epoch["seconds"] for epoch in finetuned.history), 1)
        else:
            cell.setdefault("top1_finetuned_seeds", {})[str(config.seed)] = top1
        print(key, f"fine-tuned (seed {config.seed})", top1, flush=True)
        return cell

    def finetuned_folder(self, key: str, seed: int | None = None) -> Path:
        """Where `key`'s fine-tune (and its export) lives: the recipe's seed (None), or another seed's."""
        return self.work / (key.replace("/", "-") + ("" if seed is None else f"-seed{seed}"))

    def pair(self, key: str, reference: str, over_runs: bool = False) -> None:
        """`key`'s fine-tuned top-1 minus `reference`'s on the same images, averaged over the fine-tune seeds both
        cells have (prunedroid.measure.bench.paired_difference): on the test set, and on the held-out training images
        that no method analysed (those past SCP's evaluation set) - a second, independent sample. Kept in the payload's
        "paired"; skipped unless both cells are fine-tuned, and not redone for the same seeds. over_runs: the interval
        also resamples the seeds (it then includes seed variance)."""
        seeds = sorted(set(self.finetune_seeds(key)) & set(self.finetune_seeds(reference)))
        done = self.payload.setdefault("paired", {}).get(f"{key} vs {reference}")
        if not seeds or (done and done["seeds"] == seeds):
            return
        result: dict[str, object] = {"seeds": seeds}
        for name, split in (("test", self.data.test), ("unused_holdout", self.unused_holdout)):
            if not len(split):  # a base that held out no more than SCP's evaluation set
                continue
            tables = [torch.stack([self.per_image_correct(k, seed, name, split) for seed in seeds])
                      for k in (key, reference)]
            result[name] = paired_difference(tables[0], tables[1], over_runs=over_runs)
        self.payload["paired"][f"{key} vs {reference}"] = result

    def finetune_seeds(self, key: str) -> list[int]:
        """The seeds `key` was fine-tuned with: the recipe's, then any others."""
        cell = self.cells[key]
        recipe = [self.finetune_config.seed] if "top1_finetuned" in cell else []
        return recipe + [int(seed) for seed in cell.get("top1_finetuned_seeds", {})]

    def per_image_correct(self, key: str, seed: int, split_name: str, split: cifar.Split) -> torch.Tensor:
        """Which images of `split` the fine-tuned model of `key` (under `seed`) gets right: bool (N,), evaluated
        once."""
        if (key, seed, split_name) not in self.correct:
            folder = self.finetuned_folder(key, None if seed == self.finetune_config.seed else seed)
            model = Checkpoint.load(folder / CHECKPOINT_NAME).model()
            self.correct[key, seed, split_name] = evaluate(model, split, per_image=True)["correct"]
        return self.correct[key, seed, split_name]

    def deploy(self, key: str, method: Method, budget: Budget | None, seed: int = 0, name: str = "model") -> dict:
        """Exports the cell's model (fine-tuned when it was, else as pruned) to .ptl, .onnx and .pte under `name`,
        each verified against PyTorch in its runtime, and adds their sizes (bytes) and the sidecar's path to the
        cell."""
        cell = self.cells[key]
        folder = self.finetuned_folder(key)
        source = "fine-tuned" if "top1_finetuned" in cell else "pruned"
        if cell.get("exported") != source or not (folder / "export" / f"{name}.onnx").is_file():
            checkpoint = folder / CHECKPOINT_NAME
            if source == "pruned":
                checkpoint = folder / "pruned.pt"
                pruned = prune_checkpoint(self.base_checkpoint, method, budget, seed,
                                          **self.cell_pruning_data(key, method))
                pruned.save(checkpoint)
            exported = export_checkpoint(checkpoint, self.data.test, folder / "export", name)
            cell.update(exported=source, sidecar=str(exported.sidecar),
                        **{f"{kind}_bytes": exported.report[f"{kind}_bytes"] for kind in FORMATS})
        return cell

    def time_onnx(self, keys: list[str], processes: int = 5) -> None:
        """onnxruntime batch-1 latency (ms, 1 thread) of the deployed cells: each distinct architecture (its
        channels per layer) timed once per process, all of them interleaved, in `processes` separate processes
        (one process on a shared machine has moved a ratio by up to 1.7x); every cell gets its architecture's
        median over them."""
        by_channels: dict[str, Path] = {}
        for key in keys:
            sidecar = self.cells[key].get("sidecar", self.finetuned_folder(key) / "export" / "model.json")
            by_channels.setdefault(channels_key(self.cells[key]), Path(sidecar).with_suffix(".onnx"))
        with tempfile.TemporaryDirectory() as scratch:
            timed = repeated_program_latencies("onnxruntime", by_channels, processes, Path(scratch))
        for key in keys:
            self.cells[key]["onnx_ms"] = statistics.median(timed[channels_key(self.cells[key])])

    def time_exports(self, budget_of: Callable[[dict], Budget], data_dir: str | None, processes: int, runs: int,
                     title: str) -> None:
        """Exports the base and every cell (deploy(): fine-tuned where it was, else as pruned; L1), then times them
        all together in every runtime in `processes` separate processes (repeated_latencies) into
        payload["latency"] - again only when the cells changed. budget_of: a cell -> the budget it was pruned to."""
        if self.payload.get("latency", {}).get("cells") == sorted(self.cells):
            return
        base = export_checkpoint(self.base_path, self.data.test, self.work / "base-export", "base")
        for key, cell in self.cells.items():
            self.deploy(key, "l1", budget_of(cell), name=export_name(key))
        self.save(title, "")
        sidecars = [base.sidecar, *(Path(cell["sidecar"]) for cell in self.cells.values())]
        self.payload["latency"] = {"processes": processes, "runs": runs, "cells": sorted(self.cells),
                                   "rows": repeated_latencies(sidecars, data_dir, processes, runs)}
        self.save(title, "")

    def timed(self, key: str, runtime: str) -> dict:
        """time_exports' row of a cell in one runtime."""
        return self.payload["latency"]["rows"][f"{export_name(key)}/{runtime}"]

    def save(self, title: str, table: str, notes: str = "") -> None:
        write_results(self.out, self.payload, title=title, table=table, notes=notes)


def channels_key(cell: dict) -> str:
    """A cell's architecture as a key: its channels per layer, "16/24/48/..."."""
    return "/".join(map(str, cell["channels"]))


def export_name(key: str) -> str:
    """A cell key as an export's file stem: "executorch-table/0.50" -> "executorch-table-0_50"."""
    return key.replace("/", "-").replace(".", "_")


def program_calls(runtime: str, paths: dict[str, str]) -> dict[str, Callable[[], object]]:
    """Each program (.onnx for onnxruntime, .pte for executorch) loaded in `runtime` with one thread, as one call on
    zeros of the program's own input shape: a dense kernel's time does not depend on the values."""
    torch.set_num_threads(1)
    calls: dict[str, Callable[[], object]] = {}
    if runtime == "onnxruntime":
        for key, path in paths.items():
            session = onnx_session(Path(path), threads=1)
            shape = tuple(1 if isinstance(d, str) else d for d in session.get_inputs()[0].shape)
            feed = {session.get_inputs()[0].name: np.zeros(shape, dtype=np.float32)}
            calls[key] = functools.partial(session.run, None, feed)
    else:
        pte.set_threads(1)
        for key, path in paths.items():
            method = pte.load_pte(Path(path))
            calls[key] = functools.partial(method.execute, [torch.zeros(method.metadata.input_tensor_meta(0).sizes())])
    return calls


def time_programs(runtime: str, paths: dict[str, str], runs: int = PROGRAM_RUNS) -> dict[str, float]:
    """Median batch-1 latency (ms, one thread) of each program, all interleaved in this process."""
    latencies = interleaved_latencies_ms(program_calls(runtime, paths), PROGRAM_WARMUP, runs)
    return {key: timing["median"] for key, timing in latencies.items()}


def program_request(runtime: str, paths: dict[str, Path], work: Path) -> Path:
    """The programs of `runtime` as the JSON file a worker process reads; a changed request drops the timings made
    for the previous one, so a rerun re-times only what a finished run of this request has not."""
    request = work / f"{runtime}-programs.json"
    text = json.dumps({key: str(path) for key, path in paths.items()})
    if not request.exists() or request.read_text() != text:
        for stale in work.glob(f"{runtime}-timing-*.json"):
            stale.unlink()
        request.write_text(text)
    return request


def repeated_program_latencies(runtime: str, paths: dict[str, Path], processes: int, work: Path,
                               runs: int = PROGRAM_RUNS) -> dict[str, list[float]]:
    """Per program, its median latency (ms) in each of `processes` separate processes (time_programs), each
    process's result kept under `work`, so an interrupted run resumes with the processes it has."""
    request = program_request(runtime, paths, work)
    per_process = []
    for index in range(processes):
        out = work / f"{runtime}-timing-{index}.json"
        if not out.exists():
            partial = out.with_suffix(".partial")
            subprocess.run([sys.executable, "-m", WORKER, "--time", runtime, str(request), str(partial), str(runs)],
                           check=True)
            partial.replace(out)
        per_process.append(json.loads(out.read_text()))
    return {key: [timing[key] for timing in per_process] for key in paths}


def program_instructions(runtime: str, paths: dict[str, Path], processes: int, work: Path) -> dict[str, list[int]]:
    """Per program, instructions per call under valgrind's callgrind in each of `processes` processes: a count no
    other job can move (valgrind emulates up to AVX2, so these are the runtimes' AVX2 code paths)."""
    request = program_request(runtime, paths, work)
    worker = [sys.executable, "-m", WORKER, "--count", runtime, str(request), str(COUNTED_CALLS), str(COUNT_WARMUP)]
    per_process = count_instructions(worker, COUNTED_CALLS, processes)
    return {key: [counts[key] for counts in per_process] for key in paths}


def ratios_to(base: str, per_process: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Per program: median ms over the processes, and its ratio to `base` within each process - the median
    (latency_ratio) and the min and max over the processes - with each process's ms and ratio."""
    result = {}
    for key, times in per_process.items():
        ratios = [time / base_time for time, base_time in zip(times, per_process[base])]
        result[key] = {"median_ms": statistics.median(times), "latency_ratio": statistics.median(ratios),
                       "latency_ratio_min": min(ratios), "latency_ratio_max": max(ratios),
                       "ms_per_process": times, "latency_ratio_per_process": ratios}
    return result


def instruction_ratios(base: str, counted: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """Per program: its instructions per call (median over the counting processes), their ratio to `base`'s and
    their spread over the processes (max - min, as a fraction of the median)."""
    result = {}
    for key, counts in counted.items():
        median = statistics.median(counts)
        result[key] = {"instructions": median, "instructions_spread": (max(counts) - min(counts)) / median,
                       "instructions_ratio": statistics.median(c / b for c, b in zip(counts, counted[base]))}
    return result


def architecture_latencies(specs: dict, runs: int = PROGRAM_RUNS, processes: int = 5,
                           counting_processes: int = 0) -> dict:
    """onnxruntime batch-1 latency of each architecture in `specs` (key -> VGGSpec; the first is the base), all
    interleaved, in `processes` separate processes (ratios_to the first; 0: not timed); with `counting_processes`,
    also its instructions per inference under callgrind (program_instructions) and their ratio to the first's.
    Weights are freshly initialised: a dense fp32 kernel's time does not depend on their values; BatchNorm is folded
    as `invoke export` does."""
    with tempfile.TemporaryDirectory() as scratch:
        paths = {}
        for index, (key, spec) in enumerate(specs.items()):
            paths[str(key)] = Path(scratch) / f"{index}.onnx"
            write_onnx(fold_batchnorm(build_model(spec)), paths[str(key)], dynamic_batch=True,
                       example=torch.zeros(1, *cifar.IMAGE_SHAPE))
        base = str(next(iter(specs)))
        timed = (ratios_to(base, repeated_program_latencies("onnxruntime", paths, processes, Path(scratch), runs))
                 if processes else {key: {} for key in paths})
        if counting_processes:
            counted = instruction_ratios(base, program_instructions("onnxruntime", paths, counting_processes,
                                                                    Path(scratch)))
            for key, row in counted.items():
                timed[key].update(row)
    return {key: timed[str(key)] for key in specs}


LATENCY_IMAGES = 100  # top-1 beside the timing: a check that each runtime runs the model, not a result


def repeated_latencies(sidecars: list[Path], data_dir: str | None, processes: int = 5, runs: int = 200) -> dict:
    """Batch-1 latency of each exported model in each runtime (eager PyTorch, TorchScript Lite, onnxruntime,
    ExecuTorch/XNNPACK; 1 thread) timed in `processes` separate processes (prunedroid.measure.bench.benchmark): per
    "model/runtime", the median over the processes of the median latency (ms) and of the ratio to the first model in
    the same runtime, with the ratios' min and max - one process on this shared host has moved a ratio by up to
    1.7x - each process's ms and ratio, and the SHA-256 of the checkpoint the export came from."""
    result = benchmark(sidecars, cifar.load_test(data_dir).head(LATENCY_IMAGES), runs=runs, processes=processes)
    kept = ("latency_ratio", "latency_ratio_min", "latency_ratio_max", "latency_ms_per_process",
            "latency_ratio_per_process", "mac_ratio", "file_bytes", "checkpoint_sha256")
    return {f"{row['model']}/{row['runtime']}": {"processes": processes, "median_ms": row["latency_median_ms"],
                                                 **{key: row[key] for key in kept}} for row in result["rows"]}


def ratio_spread(row: dict) -> str:
    """A repeated_latencies row's ratio to the base as "0.490x [0.484-0.502]": median [min-max over processes]."""
    return f"{row['latency_ratio']:.3f}x [{row['latency_ratio_min']:.3f}-{row['latency_ratio_max']:.3f}]"


def interval(gap: dict) -> str:
    """A paired difference (fractions) as "+0.47 [+0.02, +0.93]": points of top-1 with its 95% interval."""
    return f"{100 * gap['difference']:+.2f} [{100 * gap['low']:+.2f}, {100 * gap['high']:+.2f}]"


def mean_sd(values: list[float]) -> str:
    """Top-1 fractions over seeds as "83.50% (0.06)": mean in % and sd in points (0 for one seed)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f}% ({100 * sd:.2f})"


def chosen(option: str, every: list[str]) -> list[str]:
    """A --finetune style option: "all" of `every`, "none", or a comma list."""
    return {"all": every, "none": []}.get(option, option.split(","))


def base_title(payload: dict) -> str:
    base = payload["base"]
    name = (base.get("arch") or {}).get("name", "vgg16")
    title = MODELS[name if name in MODELS else "vgg16"].title
    return (f"{title} width {base['width']}, {base['epochs']} epochs, test top-1 {100 * base['test_top1']:.2f}% "
            f"(real CIFAR-10 test set, 10,000 images)")


def paired_table(payload: dict) -> str:
    """The payload's paired differences as a Markdown table: one row per compared cell, one column per reference
    and image set, in points of top-1 with the 95% interval."""
    columns: dict[str, dict[str, str]] = {}
    for name, result in payload.get("paired", {}).items():
        key, reference = name.split(" vs ")
        row = columns.setdefault(key, {"MAC target": f"{100 * payload['cells'][key]['target']:.0f}%",
                                       "method": key.split("/", 1)[1], "seeds": str(len(result["seeds"]))})
        for split, label in (("test", "test"), ("unused_holdout", "held-out")):
            if split not in result:
                continue
            row[f"vs {reference.split('/', 1)[1]}, {label}"] = interval(result[split])
    if not columns:
        return ""
    headers = list(dict.fromkeys(header for row in columns.values() for header in row))
    return (PAIRED_NOTE + "\n" + markdown_table(list(columns.values()), headers))


PAIRED_NOTE = """
Paired differences after fine-tuning: a method's fine-tuned top-1 minus the reference's on the same images, in
points, with a 95% bootstrap interval over images (averaged over the fine-tune seeds both have). `test`: the 10,000
test images; `held-out`: the training images held out from the base's training that no method analysed, an
independent second sample. An interval that spans 0 means the two are not told apart by these images.
"""


def percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}%"


if __name__ == "__main__":
    # A worker of repeated_program_latencies (--time <runtime> <request> <out> <runs>) or, under callgrind, of
    # program_instructions (--count <runtime> <request> <calls> <warmup> <helper library>).
    mode, program_runtime, program_list, *rest = sys.argv[1:]
    program_paths = json.loads(Path(program_list).read_text())
    if mode == "--time":
        Path(rest[0]).write_text(json.dumps(time_programs(program_runtime, program_paths, int(rest[1]))))
    else:
        count_calls(program_calls(program_runtime, program_paths), int(rest[0]), int(rest[1]), Path(rest[2]))
