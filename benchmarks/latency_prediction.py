"""How well does a latency table predict a whole model? For each runtime, every architecture of a frontier (its base
and each pruned cell's channels) is predicted by `--allocation latency`'s lookup table (the sum of its layers, each
timed alone) and timed whole (batch 1, one thread, every model interleaved, in separate processes); the table
reports the measured/predicted ratio, whether the prediction ranks the models as the measurement does (Spearman),
and whether it predicts the latency *ratio to the base* - what a `--latency-reduction` target is a share of.

    python benchmarks/latency_prediction.py --frontier benchmarks/results/frontier_wide.json \\
        --out benchmarks/results/latency_prediction_wide --work runs/bench-latency-prediction

Each layer timed alone pays one call's overhead (the runtime entering and leaving a program) that a whole model pays
once; the overhead is measured as the time of a program holding a single 1x1 conv of one channel on a 1x1 input,
and a corrected prediction subtracts it from all but one layer. Weights are freshly initialised (a dense fp32
kernel's time does not depend on them; int8 models are calibrated on random inputs) and BatchNorm is folded, as
export does. Run it on an otherwise idle machine: the tables and the whole models are timed by this script. Each
timing process's result is kept under --work, so a rerun on the same programs times only what is missing; the
instruction counts (callgrind, --counting-processes) are not disturbed by other jobs and can run any time.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from prunedroid import data as cifar
from prunedroid.deploy.export import fold_batchnorm
from prunedroid.deploy.formats import write_onnx
from prunedroid.experiment import PROGRAM_RUNS, instruction_ratios, program_instructions, repeated_program_latencies
from prunedroid.measure.bench import SLOW_FOR_MACS, speed_for_macs
from prunedroid.measure.latency import RUNTIMES, LatencyOptions, LatencyTable, layer_block, write_timing_pte
from prunedroid.measure.report import markdown_table, write_results
from prunedroid.models import build_model
from prunedroid.models.vgg import VGGSpec, vgg16_spec
from prunedroid.pruned import example_input
from prunedroid.pruning import channel_graph, count_cost
from prunedroid.pruning.groups import LayerShape

OVERHEAD = "call overhead"  # the program whose time is one call's overhead: a 1x1 conv of one channel
OVERHEAD_SHAPE = LayerShape(1, 1, 1, 1, 1, 0)


def architectures(frontier: dict) -> dict[str, VGGSpec]:
    """The frontier's base and each distinct pruned architecture (named by the first cell that has it)."""
    width_spec = vgg16_spec(frontier["base"]["width"])  # the classifier's hidden width, which pruning keeps
    specs = {"base": dataclasses.replace(width_spec, conv_channels=tuple(frontier["base"]["channels"]))}
    seen = {specs["base"].conv_channels}
    for key, cell in frontier["cells"].items():
        channels = tuple(cell["channels"])
        if channels not in seen:
            seen.add(channels)
            specs[key] = dataclasses.replace(width_spec, conv_channels=channels)
    return specs


def write_program(model: torch.nn.Module, example: torch.Tensor, runtime: str, path: Path) -> None:
    """`model` (eval, BatchNorm folded) as the file `runtime` runs, at `path` (kept: a rerun reuses it)."""
    if path.exists():
        return
    partial = path.with_suffix(path.suffix + ".partial")
    if runtime == "onnxruntime":
        write_onnx(model, partial, dynamic_batch=False, example=example)
    else:
        write_timing_pte(model, example, partial, int8=runtime == "executorch-int8")
    partial.replace(path)


def programs(specs: dict[str, VGGSpec], runtime: str, folder: Path) -> dict[str, Path]:
    """Every architecture, and the overhead program, written for `runtime` into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".onnx" if runtime == "onnxruntime" else ".pte"
    paths = {}
    for index, (key, spec) in enumerate(specs.items()):
        paths[key] = folder / f"{index}{suffix}"
        write_program(fold_batchnorm(build_model(spec)), example_input(), runtime, paths[key])
    block, example = layer_block(OVERHEAD_SHAPE)
    paths[OVERHEAD] = folder / f"overhead{suffix}"
    write_program(block, example, runtime, paths[OVERHEAD])
    return paths


def ranks(values: list[float]) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    result = np.empty(len(values))
    result[order] = np.arange(len(values))
    return result


def spearman(first: list[float], second: list[float]) -> float:
    """Rank correlation of two equally long lists (no ties among measured floats)."""
    return float(np.corrcoef(ranks(first), ranks(second))[0, 1])


def measure_runtime(runtime: str, specs: dict[str, VGGSpec], processes: int, counting_processes: int,
                    work: Path) -> dict:
    table = LatencyTable.load(LatencyOptions(runtime).table_path(work), runtime)
    models = {}
    for key, spec in specs.items():
        model = build_model(spec)
        graph = channel_graph(model, example_input())
        models[key] = {"channels": list(spec.conv_channels), "macs": count_cost(model, cifar.IMAGE_SHAPE).macs,
                       "layers": len(graph.layer_shapes(graph.channels)),
                       "predicted_ms": table.model_ms(graph, graph.channels)}
    table.save()
    paths = programs(specs, runtime, work / runtime)
    measured = repeated_program_latencies(runtime, paths, processes, work)
    counted = (instruction_ratios("base", program_instructions(runtime, paths, counting_processes, work))
               if counting_processes else {})
    overhead = statistics.median(measured[OVERHEAD])
    base = models["base"]
    for key, row in models.items():
        row["mac_ratio"] = row["macs"] / base["macs"]
        row.update(counted.get(key, {}))
        # Ratios to the base within each process, then their median and spread over the processes.
        ratios = [m / b for m, b in zip(measured[key], measured["base"])]
        row.update(measured_ms=statistics.median(measured[key]), measured_ms_min=min(measured[key]),
                   measured_ms_max=max(measured[key]),
                   corrected_ms=row["predicted_ms"] - (row["layers"] - 1) * overhead,
                   measured_ratio=statistics.median(ratios), measured_ratio_min=min(ratios),
                   measured_ratio_max=max(ratios))
    for row in models.values():
        row.update(predicted_ratio=row["predicted_ms"] / base["predicted_ms"],
                   corrected_ratio=row["corrected_ms"] / base["corrected_ms"])
    pruned = [row for key, row in models.items() if key != "base"]
    measured_ms = [row["measured_ms"] for row in pruned]
    summary = {
        "runtime": table.where, "processes": processes, "runs": PROGRAM_RUNS, "call_overhead_ms": overhead,
        "shapes_in_table": len(table.ms),
        "spearman_predicted": spearman([row["predicted_ms"] for row in pruned], measured_ms),
        "spearman_macs": spearman([row["macs"] for row in pruned], measured_ms),
        "measured_over_predicted": [min(r["measured_ms"] / r["predicted_ms"] for r in models.values()),
                                    max(r["measured_ms"] / r["predicted_ms"] for r in models.values())],
        "ratio_error_predicted": max(abs(r["predicted_ratio"] - r["measured_ratio"]) for r in pruned),
        "ratio_error_corrected": max(abs(r["corrected_ratio"] - r["measured_ratio"]) for r in pruned),
    }
    return {"summary": summary, "models": models}


def summary_rows(results: dict) -> list[dict]:
    return [{"runtime": result["summary"]["runtime"]["runtime"],
             "whole / predicted (ms)": "{:.2f}-{:.2f}x".format(*result["summary"]["measured_over_predicted"]),
             "call overhead": f"{1000 * result['summary']['call_overhead_ms']:.1f} us",
             "rank corr. (Spearman), table": f"{result['summary']['spearman_predicted']:.3f}",
             "rank corr., MACs": f"{result['summary']['spearman_macs']:.3f}",
             "worst error of the ratio to the base, table": f"{result['summary']['ratio_error_predicted']:.3f}",
             "same, overhead corrected": f"{result['summary']['ratio_error_corrected']:.3f}"}
            for result in results.values()]


def model_rows(result: dict) -> list[dict]:
    rows = []
    for key, row in result["models"].items():
        shown = {"model": key, "MACs": f"{row['macs'] / 1e6:.1f}M", "predicted ms": f"{row['predicted_ms']:.3f}",
                 "corrected ms": f"{row['corrected_ms']:.3f}",
                 "measured ms [min-max]": f"{row['measured_ms']:.3f} [{row['measured_ms_min']:.3f}-"
                                          f"{row['measured_ms_max']:.3f}]",
                 "predicted ratio": f"{row['predicted_ratio']:.3f}", "corrected ratio": f"{row['corrected_ratio']:.3f}",
                 "measured ratio [min-max]": f"{row['measured_ratio']:.3f} [{row['measured_ratio_min']:.3f}-"
                                             f"{row['measured_ratio_max']:.3f}]",
                 "MAC ratio": f"{row['mac_ratio']:.3f}",
                 "latency / MAC ratio": speed_for_macs(row["measured_ratio"], row["mac_ratio"],
                                                       row["measured_ratio_max"])}
        if "instructions" in row:
            shown |= {"instructions (M)": f"{row['instructions'] / 1e6:.2f}",
                      "instruction ratio": f"{row['instructions_ratio']:.3f}"}
        rows.append(shown)
    return rows


def allocation_rows(result: dict, frontier: dict) -> list[dict]:
    """Per allocation of the frontier's cells: how its architectures' latency ratio (median over processes, and the
    worst process) and instruction ratio compare with their MAC ratio, across its targets."""
    by_allocation: dict[str, list[dict]] = {}
    for key, row in result["models"].items():
        if key != "base":
            by_allocation.setdefault(frontier["cells"][key]["allocation"], []).append(row)
    rows = []
    for allocation, models in by_allocation.items():
        median = [row["measured_ratio"] / row["mac_ratio"] for row in models]
        worst = [row["measured_ratio_max"] / row["mac_ratio"] for row in models]
        shown = {"allocation": allocation, "architectures": len(models),
                 "latency / MAC ratio, median process": f"{min(median):.2f}-{max(median):.2f}x",
                 "same, slowest process": f"{min(worst):.2f}-{max(worst):.2f}x",
                 f"flagged (> {SLOW_FOR_MACS:.1f}x in any process)": f"{sum(w > SLOW_FOR_MACS for w in worst)} of "
                                                                       f"{len(models)}"}
        if all("instructions_ratio" in row for row in models):
            counted = [row["instructions_ratio"] / row["mac_ratio"] for row in models]
            shown["instruction ratio / MAC ratio"] = f"{min(counted):.2f}-{max(counted):.2f}x"
        rows.append(shown)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frontier", default="benchmarks/results/frontier_wide.json",
                        help="a frontier benchmark's JSON: its base's and cells' channels are the models")
    parser.add_argument("--runtimes", default="onnxruntime,executorch", help=f"of {', '.join(RUNTIMES)}")
    parser.add_argument("--processes", type=int, default=5, help="separate timing processes")
    parser.add_argument("--counting-processes", type=int, default=2,
                        help="separate callgrind processes counting instructions per inference (0: none)")
    parser.add_argument("--out", default="benchmarks/results/latency_prediction_wide", help="results stem")
    parser.add_argument("--work", default="runs/bench-latency-prediction", help="tables, programs, timings")
    args = parser.parse_args()
    frontier = json.loads(Path(args.frontier).read_text())
    specs = architectures(frontier)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {runtime: measure_runtime(runtime, specs, args.processes, args.counting_processes, work)
               for runtime in args.runtimes.split(",")}
    sections = [f"{len(specs)} architectures: the base ({frontier['base']['checkpoint']}, width "
                f"{frontier['base']['width']}) and every distinct pruned architecture of `{args.frontier}`. Batch 1, "
                f"one thread; whole models: median over {args.processes} separate processes ({PROGRAM_RUNS} "
                f"interleaved runs each); tables: each layer alone, median of 60 runs, as `--allocation latency` "
                f"times them.\n",
                markdown_table(rows := summary_rows(results), list(rows[0]))]
    for result in results.values():
        sections += [f"\n### {result['summary']['runtime']['runtime']}: latency against MACs, per allocation\n",
                     markdown_table(rows := allocation_rows(result, frontier), list(rows[0]))]
    for result in results.values():
        sections += [f"\n### {result['summary']['runtime']['runtime']}: per model\n",
                     markdown_table(rows := model_rows(result), list(rows[0]))]
    write_results(args.out, {"frontier": args.frontier, "results": results},
                  title="Latency tables against whole models: predicted vs measured batch-1 latency",
                  table="\n".join(sections), notes=NOTES)


NOTES = """
Rank correlation is over the pruned models only (the base is each ratio's denominator). `whole / predicted`: the
whole model's measured latency over the table's sum of layers, across all models. The ratio to the base is what a
`--latency-reduction` target is a share of: its worst error says how far a predicted 50% can land from a measured
50%. Corrected: each layer's time minus one call's overhead, plus one overhead for the model; with models of equal
depth this shifts every prediction by the same amount, so it changes ratios, never the ranking. `latency / MAC
ratio`: the measured ratio to the base over the MAC ratio, flagged SLOW when the slowest process is more than 10%
slower than the MACs say. Instructions: per batch-1 call under valgrind's callgrind (3 calls after 2 warm-up ones,
in separate processes; `--counting-processes`), a figure no other job on the machine can move; valgrind emulates the
CPU up to AVX2, so the counts are of the runtimes' AVX2 kernels, not the AVX-512 ones the timings ran.
"""


if __name__ == "__main__":
    main()
