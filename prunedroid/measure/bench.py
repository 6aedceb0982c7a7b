"""Host benchmark: for each exported model and runtime (eager PyTorch, TorchScript Lite, onnxruntime, ExecuTorch with
XNNPACK; int8 ExecuTorch and onnxruntime where exported), batch-1 latency, file size, MACs, parameters and test top-1,
side by side in one run."""
from __future__ import annotations

import functools
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from prunedroid import data as cifar
from prunedroid.deploy.export import fold_batchnorm
from prunedroid.deploy.formats import FORMATS, ModelFormat, Predictor, int8_formats, predict
from prunedroid.deploy.probe import probe
from prunedroid.deploy.sidecar import Sidecar, unique_names
from prunedroid.errors import PrunedroidError
from prunedroid.files import read_json
from prunedroid.options import MAX_THREADS, is_finite_number
from prunedroid.pruning.cost import ModelCost, count_cost
from prunedroid.training.checkpoint import Checkpoint

ROUNDS = 10  # interleaved timing rounds: drift on a shared machine is spread over every model and runtime


Runtimes = dict[str, tuple[Predictor, int]]  # runtime -> (its predictor, the file it runs, bytes)


Key = TypeVar("Key", bound=Hashable)  # what names a timed call: the same key comes back with its times
MAX_PROCESSES = 100  # separate timing processes: 5 is the default, and each starts a Python with torch


def check_timing(threads: int, warmup: int, runs: int, rounds: int, processes: int = 1) -> None:
    """Refuses timing settings that cannot give a median: before any model or data is loaded."""
    if not 1 <= threads <= MAX_THREADS or warmup < 0 or rounds < 1 or runs < rounds:
        raise PrunedroidError(f"need --threads in 1..{MAX_THREADS}, --warmup >= 0 and --runs >= {rounds} (one per "
                              f"interleaved round); got threads {threads}, warmup {warmup}, runs {runs}")
    if not 1 <= processes <= MAX_PROCESSES:
        raise PrunedroidError(f"need at least 1 timing process and at most {MAX_PROCESSES} (--processes, "
                              f"--bench-processes), got {processes}")


def interleaved_latencies_ms(calls: Mapping[Key, Callable[[], object]], warmup: int = 20, runs: int = 200,
                             rounds: int = ROUNDS) -> dict[Key, dict[str, float]]:
    """Median and p90 (ms) of `runs` calls of each of `calls`, timed in `rounds` interleaved blocks (every call
    runs / rounds times per round), so drift on a shared machine hits all of them alike."""
    check_timing(1, warmup, runs, rounds)
    for call in calls.values():
        for _ in range(warmup):
            call()
    timings: dict[Key, list[float]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            for _ in range(runs // rounds):
                started = time.perf_counter()
                call()
                timings[key].append(1000 * (time.perf_counter() - started))
    return {key: {"median": statistics.median(values), "p90": float(np.percentile(values, 90))}
            for key, values in timings.items()}


def paired_difference(correct: torch.Tensor, reference: torch.Tensor, resamples: int = 2000,
                      seed: int = 0, over_runs: bool = False) -> dict[str, float]:
    """Top-1 of one method minus another's on the same images, with a 95% bootstrap interval (fractions).

    correct, reference: bool (runs, N) - which of N images each run (e.g. each fine-tune seed) got right. Runs are
    averaged per image first, so the interval is over images: how far the gap could move on another N images drawn
    like these. Two models' errors on one image are correlated, so the paired interval is much narrower than the
    two accuracies' separate ones. over_runs: each resample also draws each side's runs with replacement, so the
    interval includes how far the gap moves with the fine-tune seed (with a single run per side it cannot)."""
    if correct.shape[1:] != reference.shape[1:] or correct.dim() != 2 or reference.dim() != 2:
        raise PrunedroidError(f"paired comparison needs two (runs, images) tables over the same images, got "
                              f"{tuple(correct.shape)} and {tuple(reference.shape)}")
    generator = torch.Generator().manual_seed(seed)
    images = correct.shape[1]
    correct, reference = correct.double(), reference.double()
    gap = correct.mean(0) - reference.mean(0)  # (N,) per-image difference
    means = []
    for start in range(0, resamples, 200):  # 200 resamples at a time: bounded memory
        count = min(200, resamples - start)
        drawn = torch.randint(images, (count, images), generator=generator)
        if over_runs:
            per_image = [table[torch.randint(len(table), (count, len(table)), generator=generator)].mean(1)
                         for table in (correct, reference)]  # (count, N) each: a redrawn set of runs per side
            means.append((per_image[0] - per_image[1]).gather(1, drawn).mean(1))
        else:
            means.append(gap[drawn].mean(1))
    low, high = torch.quantile(torch.cat(means), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"difference": gap.mean().item(), "low": low, "high": high, "images": images, "runs": len(correct),
            **({"over_runs": True} if over_runs else {})}


def _model_files(sidecar: Sidecar) -> dict[str, tuple[ModelFormat, Path]]:
    """runtime -> (format, the exported file it runs), each checked against the sidecar (Sidecar.model_file)."""
    fp32 = {entry.runtime: (entry, sidecar.model_file(kind)) for kind, entry in FORMATS.items()
            if kind in sidecar.files}
    return {**fp32, **{entry.int8_runtime: (entry, sidecar.model_file(entry.kind, int8=True))
                       for entry in int8_formats() if entry.kind in sidecar.int8}}


def _predictors(model: nn.Module, files: dict[str, tuple[ModelFormat, Path]], threads: int) -> Runtimes:
    """runtime -> (batch -> logits, file size in bytes) for one exported model: `model` (its checkpoint's) in eager
    PyTorch and each of `files` (runtime -> format and checked, probed file) in its runtime."""
    eager = fold_batchnorm(model)
    state = io.BytesIO()
    torch.save(eager.state_dict(), state)

    def run_eager(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return eager(x)

    return {"pytorch": (run_eager, state.getbuffer().nbytes),
            **{runtime: (entry.load(path, threads), path.stat().st_size)
               for runtime, (entry, path) in files.items()}}


def _exported_model(sidecar: Sidecar) -> nn.Module:
    """The model of the checkpoint the sidecar was exported from, once that checkpoint still has the recorded hash
    and the sidecar's architecture (so one benchmark row never mixes two models)."""
    checkpoint = Checkpoint.load(sidecar.exported_checkpoint())
    if checkpoint.arch != sidecar.arch:
        raise PrunedroidError(f"{sidecar.path} describes another architecture than its checkpoint "
                              f"{sidecar.checkpoint}: the sidecar was edited; export again")
    return checkpoint.model()


def load_models(sidecars: Sequence[str | Path], threads: int = 1) -> dict[str, tuple[Sidecar, Runtimes, ModelCost]]:
    """Each exported model, by its sidecar's name: the sidecar, runtime -> (predictor, file bytes) for eager PyTorch
    and every file it names, and the model's cost. Every file is checked against its sidecar's hash and run once in
    a child process first, so no damaged or crafted file reaches a runtime in this one."""
    paths = [Path(p) for p in sidecars]
    unique_names(paths)
    torch.set_num_threads(threads)
    described = [Sidecar.read(path) for path in paths]
    exported = [(sidecar, _exported_model(sidecar), _model_files(sidecar)) for sidecar in described]
    probe({file: list(sidecar.input_shape) for sidecar, _, files in exported for _, file in files.values()})
    return {sidecar.name: (sidecar, _predictors(model, files, threads), count_cost(model))
            for sidecar, model, files in exported}


def _time_models(models: dict[str, tuple[Sidecar, Runtimes, ModelCost]], shape: tuple[int, ...], warmup: int,
                 runs: int, rounds: int) -> dict[tuple[str, str], dict[str, float]]:
    """(model, runtime) -> median and p90 (ms) of batch-1 calls on a zero image of `shape` (C, H, W): a dense kernel's
    time does not depend on the pixel values; every model and runtime interleaved."""
    one = torch.zeros(1, *shape)
    return interleaved_latencies_ms({(model_name, runtime): functools.partial(predict, one)
                                     for model_name, (_, predictors, _) in models.items()
                                     for runtime, (predict, _) in predictors.items()},
                                    warmup, runs, rounds)  # type: ignore[return-value]


def _time_in_processes(sidecars: list[Path], processes: int, threads: int, warmup: int, runs: int,
                       rounds: int) -> list[dict[tuple[str, str], dict[str, float]]]:
    """_time_models in `processes` fresh Python processes one after another, one result each: a ratio from one
    process on a shared host has moved by up to 1.7x, so a reported ratio is the median over several."""
    timings = []
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(processes):
            out = Path(scratch) / f"{index}.json"
            done = subprocess.run([sys.executable, "-m", "prunedroid.measure.bench", str(out), str(threads),
                                   str(warmup), str(runs), str(rounds), *map(str, sidecars)],
                                  capture_output=True, text=True)
            if done.returncode:
                last = (done.stderr.strip().splitlines() or ["no message"])[-1]
                raise PrunedroidError(f"timing process {index + 1} of {processes} failed ({last}); run "
                                      f"`python -m prunedroid.measure.bench` by hand to see all of it")
            timings.append({(model, runtime): latency for model, runtime, latency in json.loads(out.read_text())})
    return timings


def benchmark(sidecars: Sequence[str | Path], test: cifar.Split, threads: int = 1, warmup: int = 20, runs: int = 200,
              rounds: int = ROUNDS, processes: int = 1) -> dict:
    """Top-1 on `test` and batch-1 latency per model and runtime. Latency is measured in `rounds` interleaved blocks
    (every model and runtime once per round), so drift on a shared machine hits all of them alike; median and p90
    are over all `runs` single-image calls (ms). processes > 1: timed in that many separate processes instead of
    this one; a row's median_ms, p90_ms and latency_ratio are then the median over the processes, with the ratio's
    min and max (latency_ratio_min, latency_ratio_max). Every row keeps each process's median (ms) and ratio
    (latency_ms_per_process, latency_ratio_per_process), so any summary of them can be recomputed."""
    check_timing(threads, warmup, runs, rounds, processes)
    models = load_models(sidecars, threads)
    shape = next(iter(models.values()))[0].input_shape[1:]
    timings = ([_time_models(models, shape, warmup, runs, rounds)] if processes == 1 else
               _time_in_processes([Path(p) for p in sidecars], processes, threads, warmup, runs, rounds))
    images = cifar.normalize(test.images)
    baseline = next(iter(models))
    rows: list[dict[str, Any]] = []
    for model_name, (sidecar, predictors, cost) in models.items():
        for runtime, (predictor, size) in predictors.items():
            predictions = predict(predictor, images).argmax(1)
            medians = [timing[model_name, runtime]["median"] for timing in timings]
            ratios = [median / timing[baseline, runtime]["median"] for median, timing in zip(medians, timings)]
            rows.append({"model": model_name, "runtime": runtime, "checkpoint_sha256": sidecar.checkpoint_sha256,
                         "test_top1": (predictions == test.labels).float().mean().item(),
                         "macs": cost.macs, "params": cost.params, "file_bytes": size,
                         "latency_median_ms": statistics.median(medians),
                         "latency_p90_ms": statistics.median(t[model_name, runtime]["p90"] for t in timings),
                         "latency_ratio": statistics.median(ratios), "latency_ratio_min": min(ratios),
                         "latency_ratio_max": max(ratios), "latency_ms_per_process": medians,
                         "latency_ratio_per_process": ratios, "threads": threads})
    baseline_cost = {r["runtime"]: r["macs"] for r in rows if r["model"] == baseline}
    for row in rows:
        row["mac_ratio"] = row["macs"] / baseline_cost[row["runtime"]]
    return {"rows": rows, "threads": threads, "warmup": warmup, "runs": runs, "rounds": rounds,
            "processes": processes, "test_images": len(test), "baseline_model": baseline}


ROW_NUMBERS = ("macs", "params", "file_bytes", "latency_median_ms", "latency_p90_ms", "mac_ratio", "latency_ratio")


def read_report(path: Path) -> dict:
    """A results file `invoke bench` (or bench-device) wrote, checked row by row, to which device rows are added;
    else an error: a foreign or damaged file is never merged into new results."""
    report = read_json(path, "a report of `invoke bench`")
    rows = report.get("rows") if isinstance(report, dict) else None
    sound = isinstance(rows, list) and all(
        isinstance(row, dict) and isinstance(row.get("model"), str) and isinstance(row.get("runtime"), str)
        and all(is_finite_number(row.get(key)) and row[key] > 0 for key in ROW_NUMBERS)
        and (row.get("test_top1") is None or is_finite_number(row["test_top1"]) and 0 <= row["test_top1"] <= 1)
        for row in rows)
    if not sound:
        raise PrunedroidError(f"{path} is not a report of `invoke bench` (rows of models, runtimes and finite "
                              f"measurements); pass another --report, or move the file")
    return report


def same_models(result: dict, sidecars: dict[str, Sidecar]) -> None:
    """Refuses a report whose rows name one of `sidecars`' models (name -> sidecar) but measured another export of it
    (another checkpoint's SHA-256): rows are joined by what was measured, not by name."""
    for row in result.get("rows", []):
        sidecar = sidecars.get(row["model"])
        if sidecar is not None and row.get("checkpoint_sha256") != sidecar.checkpoint_sha256:
            measured = (f"another export of it (its checkpoint's SHA-256 {row['checkpoint_sha256'][:12]}, now "
                        f"{sidecar.checkpoint_sha256[:12]})" if isinstance(row.get("checkpoint_sha256"), str) else
                        "a model this version cannot identify (an older `invoke bench` recorded no checkpoint hash)")
            raise PrunedroidError(f"the report's rows for {row['model']} were measured on {measured}: rerun `invoke "
                                  f"bench` on these models, or pass another --report")


def add_device_rows(result: dict, device: dict, sidecars: dict[str, Sidecar]) -> dict:
    """`result` (from benchmark(), or empty) with one row per model and runtime measured on a phone (bench_device()'s
    result), runtime "android-lite (<phone>)" or "android-executorch (<phone>)", ratios against the first model on
    the same runtime and phone. Top-1 is not measured there: the same file gives the host's top-1 (TorchScript Lite,
    ExecuTorch)."""
    same_models(result, sidecars)
    phone = f"{device['device']['manufacturer']} {device['device']['model']}"
    measured_runtimes = {f"android-{runtime} ({phone})" for runtime in device["models"]}
    rows = [r for r in result.get("rows", []) if r["runtime"] not in measured_runtimes]
    for runtime, runs in device["models"].items():
        measured = [{"model": name, "runtime": f"android-{runtime} ({phone})", "test_top1": None,
                     "checkpoint_sha256": sidecars[name].checkpoint_sha256,
                     "macs": sidecars[name].macs, "params": sidecars[name].params,
                     "file_bytes": run["model_bytes"], "latency_median_ms": run["latency_ms"]["median"],
                     "latency_p90_ms": run["latency_ms"]["p90"], "threads": run["threads"]}
                    for name, run in runs.items()]
        for row in measured:
            row["mac_ratio"] = row["macs"] / measured[0]["macs"]
            row["latency_ratio"] = row["latency_median_ms"] / measured[0]["latency_median_ms"]
        rows += measured
    return {**result, "rows": rows, "device": {k: v for k, v in device.items() if k != "models"},
            "device_results": device["models"]}


SLOW_FOR_MACS = 1.10  # a model whose latency ratio exceeds its MAC ratio by more than this factor is flagged


def speed_for_macs(latency_ratio: float, mac_ratio: float, worst: float | None = None) -> str:
    """Latency ratio over MAC ratio (1.00x: exactly as fast as its MACs say), flagged past SLOW_FOR_MACS - judged by
    `worst`, the slowest timing process's latency ratio, where there were several (a claim holds only if every
    process says so)."""
    relative = latency_ratio / mac_ratio
    return f"{relative:.2f}x" + (" SLOW for its MACs" if (worst or latency_ratio) / mac_ratio > SLOW_FOR_MACS else "")


def processes_note(result: dict) -> str:
    """How a benchmark() result's latency was repeated, for a sentence about it ("" for one process)."""
    processes = result.get("processes", 1)
    return (f", in each of {processes} separate processes (a row gives the median over them; [min-max] of the latency "
            f"ratio)" if processes > 1 else "")


def table_rows(result: dict) -> list[dict]:
    """Rows formatted for a Markdown table; a latency ratio timed in several processes shows [min-max] over them."""
    percent = lambda value: "" if value is None else f"{100 * value:.2f}%"
    spread = lambda r: (f" [{r['latency_ratio_min']:.2f}-{r['latency_ratio_max']:.2f}]"
                        if result.get("processes", 1) > 1 and "latency_ratio_max" in r else "")
    return [{"model": r["model"], "runtime": r["runtime"], "test top-1": percent(r["test_top1"]),
             "MACs": f"{r['macs'] / 1e6:.2f}M", "params": f"{r['params'] / 1e6:.3f}M",
             "file": f"{r['file_bytes'] / 1e6:.2f} MB", "median ms": f"{r['latency_median_ms']:.3f}",
             "p90 ms": f"{r['latency_p90_ms']:.3f}", "MACs vs base": f"{r['mac_ratio']:.2f}x",
             "latency vs base": f"{r['latency_ratio']:.2f}x{spread(r)}",
             "latency / MAC ratio": speed_for_macs(r["latency_ratio"], r["mac_ratio"],
                                                   r.get("latency_ratio_max") if spread(r) else None)}
            for r in result["rows"]]


def _timing_process(argv: list[str]) -> None:
    """One of _time_in_processes' processes: <out.json> <threads> <warmup> <runs> <rounds> <sidecar>...; writes
    [model, runtime, {median, p90}] triples."""
    out, threads, warmup, runs, rounds, *sidecars = argv
    models = load_models(sidecars, int(threads))
    shape = next(iter(models.values()))[0].input_shape[1:]
    timed = _time_models(models, shape, int(warmup), int(runs), int(rounds))
    Path(out).write_text(json.dumps([[model, runtime, latency] for (model, runtime), latency in timed.items()]))


if __name__ == "__main__":
    _timing_process(sys.argv[1:])
