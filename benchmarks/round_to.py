"""Does rounding each layer's channel count to a multiple of N make a pruned model as fast as its MACs say?

Part 1, latency (architecture only: a dense fp32 kernel's time does not depend on the weights' values): for each
width, the unpruned VGG16-BN and the models a uniform MAC budget leaves at every target and every --round-to step,
exported to ONNX with BatchNorm folded as `invoke export` does, timed in onnxruntime at batch 1 on one thread, all
architectures of a width interleaved, in --processes separate processes. Reported: MAC ratio, latency ratio (median
over the processes, [min-max]) and their quotient; a model more than 10% slower than its MAC ratio in any process is
flagged.

Part 2, accuracy (with --base): the same budget with and without rounding on a trained base, L1 and SCP, top-1 right
after pruning, with BatchNorm re-measured and after the identical short fine-tune, paired on the same images.

    python benchmarks/round_to.py --base runs/quick/checkpoint.pt --out benchmarks/results/round_to

Cells already in <out>.json are kept (an interrupted run resumes); fine-tuned checkpoints go under --work.
`--processes 0 --counting-processes 1` adds instruction counts to the timings already in <out>.json without timing
again: counts are exact on a busy host, timings are not.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from prunedroid.errors import PrunedroidError
from prunedroid.experiment import Bench, architecture_latencies, arguments, paired_table, percent, ratio_spread, resumed
from prunedroid.measure.bench import SLOW_FOR_MACS, speed_for_macs
from prunedroid.measure.report import markdown_table, write_results
from prunedroid.models import build_model, vgg16_spec
from prunedroid.pruned import example_input
from prunedroid.pruning import Budget, SCPConfig, channel_graph, kept_counts


def timed_architectures(width: float, targets: list[float], steps: list[int], runs: int, processes: int,
                        counting_processes: int, earlier: list[dict], results: Path) -> list[dict]:
    """One row per (target, step) and one for the unpruned model: channels, MACs and onnxruntime latency (ms; the
    ratio to the unpruned model as the median over `processes` separate processes, with its min and max; with
    `processes` 0, the `earlier` rows' timing of the same architecture), and with `counting_processes` its
    instructions per inference (callgrind) and their ratio."""
    base = vgg16_spec(width)
    graph = channel_graph(build_model(base), example_input())
    specs = {(0.0, 1): base}
    for target in targets:
        for step in steps:
            counts = kept_counts(graph, Budget.of(mac_reduction=target, round_to=step))
            specs[target, step] = dataclasses.replace(base, conv_channels=tuple(counts))
    kept = earlier_timings(width, specs, earlier, results) if not processes else {key: {} for key in specs}
    latencies = architecture_latencies(specs, runs, processes, counting_processes)
    return [{"width": width, "target": target, "round_to": step, "channels": list(spec.conv_channels),
             "mac_ratio": graph.macs(spec.conv_channels) / graph.macs(), **kept[target, step],
             **latencies[target, step]} for (target, step), spec in specs.items()]


def earlier_timings(width: float, specs: dict, earlier: list[dict], results: Path) -> dict:
    """Per (target, step): the timing fields the earlier run's row of the same architecture (width and channels) has;
    refused before anything is counted if one of `specs` was not timed."""
    timed = {(row["width"], tuple(row["channels"])): row for row in earlier if "median_ms" in row}
    missing = [key for key, spec in specs.items() if (width, tuple(spec.conv_channels)) not in timed]
    if missing:
        raise PrunedroidError(f"{results} has no timing of {len(missing)} of the width-{width} architectures (first: "
                              f"{missing[0][0]:.0%} fewer MACs, round to {missing[0][1]}); time them with --processes "
                              f"5")
    return {key: {field: value for field, value in timed[width, tuple(spec.conv_channels)].items()
                  if field in TIMING_FIELDS} for key, spec in specs.items()}


TIMING_FIELDS = ("median_ms", "latency_ratio", "latency_ratio_min", "latency_ratio_max", "ms_per_process",
                 "latency_ratio_per_process")


def latency_table(rows: list[dict]) -> str:
    shown = [{"width": row["width"], "MAC target": f"{100 * row['target']:.0f}%" if row["target"] else "base",
              "round to": row["round_to"], "channels": "/".join(map(str, sorted(set(row["channels"])))),
              "MACs vs base": f"{row['mac_ratio']:.3f}x", "median ms": f"{row['median_ms']:.3f}",
              "latency vs base [min-max]": ratio_spread(row),
              "latency / MAC ratio": speed_for_macs(row["latency_ratio"], row["mac_ratio"], row["latency_ratio_max"]),
              **({"instructions vs base": f"{row['instructions_ratio']:.3f}x"} if "instructions_ratio" in row else {})}
             for row in rows]
    return markdown_table(shown, list(shown[0]))


def summary(rows: list[dict], steps: list[int]) -> str:
    """Per width and step: how many pruned models are flagged (slow for their MACs in any process), and the mean
    latency / MAC ratio (medians over processes)."""
    lines = []
    for width in sorted({row["width"] for row in rows}):
        for step in steps:
            chosen = [row for row in rows if row["width"] == width and row["round_to"] == step and row["target"]]
            quotients = [row["latency_ratio"] / row["mac_ratio"] for row in chosen]
            flagged = sum(row["latency_ratio_max"] / row["mac_ratio"] > SLOW_FOR_MACS for row in chosen)
            counted = [row["instructions_ratio"] / row["mac_ratio"] for row in chosen if "instructions_ratio" in row]
            lines.append({"width": width, "round to": step, "mean latency / MAC ratio":
                          f"{sum(quotients) / len(quotients):.2f}x", "worst": f"{max(quotients):.2f}x",
                          "flagged (>10% slower than MACs)": f"{flagged} of {len(quotients)}",
                          **({"mean instructions / MAC ratio": f"{sum(counted) / len(counted):.2f}x"}
                             if counted else {})})
    return markdown_table(lines, list(lines[0]))


ACCURACY_METHODS = {"l1": "l1", "scp-cosine": SCPConfig()}


def accuracy(args, steps: list[int]) -> dict:
    """Top-1 pruned / BatchNorm re-measured / fine-tuned without rounding and with each of `steps`, each rounded
    cell paired with the unrounded one after fine-tuning."""
    bench = Bench.from_arguments(args)
    target = float(args.accuracy_target)
    for name, method in ACCURACY_METHODS.items():
        for step in (1, *steps):
            key = f"{target:.2f}/{name}-r{step}"
            budget = Budget.of(mac_reduction=target, round_to=step)
            bench.measure(key, method, budget, target=target, round_to=step)
            bench.finetune(key, method, budget)
            bench.save("round_to accuracy (in progress)", "")
        for step in steps:
            bench.pair(f"{target:.2f}/{name}-r{step}", f"{target:.2f}/{name}-r1")
    return bench.payload


def accuracy_table(payload: dict) -> str:
    rows = [{"cell": key, "MACs removed": percent(cell["mac_reduction"]),
             "channels": "/".join(map(str, sorted(set(cell["channels"])))),
             "right after pruning": percent(cell["top1_pruned"]),
             "BatchNorm re-measured": percent(cell["top1_recalibrated"]),
             "after the fine-tune": percent(cell.get("top1_finetuned"))} for key, cell in payload["cells"].items()]
    return markdown_table(rows, list(rows[0]))


def main() -> None:
    parser = arguments(__doc__, out="benchmarks/results/round_to", work="runs/bench-round-to")
    parser.add_argument("--widths", default="0.25,0.5,1.0", help="VGG16 widths to time (0.25 quick, 0.5 wide)")
    parser.add_argument("--targets", default="0.3,0.5,0.7", help="MAC reductions")
    parser.add_argument("--steps", default="1,4,8,16", help="--round-to values")
    parser.add_argument("--runs", type=int, default=300, help="timed runs per architecture")
    parser.add_argument("--processes", type=int, default=5,
                        help="separate timing processes per width (0: keep <out>.json's timings, only count)")
    parser.add_argument("--counting-processes", type=int, default=0,
                        help="callgrind processes counting each architecture's instructions per inference (0: none)")
    parser.add_argument("--accuracy-steps", default="8,16", help="the roundings compared with none on --base")
    parser.add_argument("--accuracy-target", default="0.5", help="the MAC reduction of the accuracy comparison")
    parser.add_argument("--no-accuracy", action="store_true", help="time architectures only (no --base needed)")
    args = parser.parse_args()
    targets, steps = [float(t) for t in args.targets.split(",")], [int(s) for s in args.steps.split(",")]
    results = Path(args.out).with_suffix(".json")
    previous = resumed(json.loads(results.read_text())) if results.exists() else {}
    payload = {} if args.no_accuracy else accuracy(args, [int(s) for s in args.accuracy_steps.split(",")])
    timing = {"latency_runs": args.runs, "latency_processes": args.processes}
    if not args.processes:  # counting only: the timings are the earlier run's
        timing = {key: previous.get(key) for key in timing}
    latency_rows = [row for width in args.widths.split(",")
                    for row in timed_architectures(float(width), targets, steps, args.runs, args.processes,
                                                   args.counting_processes, previous.get("latency", []), results)]
    payload = {**previous, **payload, "latency": latency_rows, **timing}
    sections = [f"## Latency vs MACs (onnxruntime, batch 1, 1 thread, median of {timing['latency_runs']} runs, each "
                f"width's architectures interleaved, in {timing['latency_processes']} separate processes: ratios are "
                f"the median over them [min-max])\n\n{summary(latency_rows, steps)}\n{latency_table(latency_rows)}"]
    if "cells" in payload:
        sections.append(f"## Accuracy with and without rounding ({payload['base']['checkpoint']}, "
                        f"{100 * payload['base']['test_top1']:.2f}%)\n\n{accuracy_table(payload)}"
                        f"{paired_table(payload)}")
    write_results(args.out, payload, title="Channel rounding: latency against MACs, and what it costs in accuracy",
                  table="\n".join(sections))


if __name__ == "__main__":
    main()
