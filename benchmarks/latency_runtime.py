"""Does it pay to time the layers in the runtime the app ships? `--allocation latency` with an ExecuTorch table
(XNNPACK fp32, the app's) against the same allocation with an onnxruntime table, compared at equal latency measured
in ExecuTorch: L1 scores, `--round-to 8`, the quick base.

1. The ExecuTorch-table model is pruned to `--target` of its predicted latency; onnxruntime-table models to each of
   `--onnx-targets`.
2. Every pruned model and the base are exported and timed whole in every runtime (batch 1, one thread, all models
   interleaved) in `--processes` separate processes: the latency ratio to the base is the median over the processes,
   with its min-max.
3. Of the onnxruntime-table models, the one whose measured ExecuTorch ratio is closest to the ExecuTorch-table
   model's is fine-tuned beside it (a choice made on latency alone, never on test images), each under `--seeds`;
   their difference in test top-1 gets a paired interval that resamples the seeds as well as the images.

    python benchmarks/latency_runtime.py --base runs/verify-quick/base/checkpoint.pt \\
        --data-dir ../shared/cifar-10-batches-py --out benchmarks/results/latency_runtime_quick \\
        --work runs/bench-latency-runtime

Cells, exports and fine-tunes resume from <out>.json and --work.
"""
from __future__ import annotations

from prunedroid.experiment import Bench, arguments, base_title, mean_sd, percent, ratio_spread
from prunedroid.measure.report import markdown_table
from prunedroid.pruning import Budget

RUNTIMES = ("executorch", "onnxruntime", "torchscript-lite", "pytorch")


def key_of(runtime: str, target: float) -> str:
    return f"{runtime}-table/{target:.2f}"


def budget_of(cell: dict) -> Budget:
    return Budget.of(latency_reduction=cell["target"], allocation="latency", round_to=cell["round_to"])


def prune_cells(bench: Bench, target: float, onnx_targets: list[float], round_to: int) -> None:
    for runtime, targets in (("executorch", [target]), ("onnxruntime", onnx_targets)):
        for each in targets:
            key = key_of(runtime, each)
            bench.measure(key, "l1", Budget.of(latency_reduction=each, allocation="latency", round_to=round_to),
                          latency_runtime=runtime, target=each, round_to=round_to)
            bench.save("latency runtime (in progress)", "")


def matched(bench: Bench, reference: str) -> str:
    """The onnxruntime-table cell whose measured ExecuTorch latency ratio is closest to `reference`'s."""
    goal = bench.timed(reference, "executorch")["latency_ratio"]
    candidates = [key for key in bench.cells if key.startswith("onnxruntime-table/")]
    return min(candidates, key=lambda key: abs(bench.timed(key, "executorch")["latency_ratio"] - goal))


def latency_rows(bench: Bench) -> list[dict]:
    rows = []
    for key, cell in bench.cells.items():
        row = {"model": key, "MACs vs base": f"{1 - cell['mac_reduction']:.3f}x",
               "top-1 pruned, BN re-measured": percent(cell["top1_recalibrated"])}
        for runtime in RUNTIMES:
            row[f"{runtime} latency vs base"] = ratio_spread(bench.timed(key, runtime))
        rows.append(row)
    return rows


def finetune_rows(bench: Bench, keys: list[str]) -> list[dict]:
    rows = []
    for key in keys:
        seeds = bench.cells[key].get("top1_finetuned_seeds", {})
        values = [bench.cells[key]["top1_finetuned"], *seeds.values()]
        rows.append({"model": key, "seeds": len(values),
                     "fine-tuned top-1, mean (sd)": mean_sd(values),
                     "per seed": ", ".join(f"{100 * v:.2f}" for v in values),
                     "executorch latency vs base": f"{bench.timed(key, 'executorch')['latency_ratio']:.3f}x"})
    return rows


def main() -> None:
    parser = arguments(__doc__, out="benchmarks/results/latency_runtime_quick", work="runs/bench-latency-runtime")
    parser.add_argument("--target", type=float, default=0.5, help="share of predicted ExecuTorch latency removed")
    parser.add_argument("--onnx-targets", default="0.4,0.5,0.6,0.7",
                        help="shares of predicted onnxruntime latency removed, one model each")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--seeds", default="0,1,2", help="fine-tune seeds of the two compared models")
    parser.add_argument("--processes", type=int, default=5, help="separate timing processes")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per model and runtime in each process")
    args = parser.parse_args()
    bench = Bench.from_arguments(args)
    prune_cells(bench, args.target, [float(t) for t in args.onnx_targets.split(",")], args.round_to)
    bench.time_exports(budget_of, args.data_dir, args.processes, args.runs, "latency runtime (in progress)")
    ours = key_of("executorch", args.target)
    other = matched(bench, ours)
    bench.payload["matched"] = other
    seeds = [int(seed) for seed in args.seeds.split(",")]
    for key in (ours, other):
        for seed in seeds:
            bench.finetune(key, "l1", budget_of(bench.cells[key]), finetune_seed=seed)
            bench.save("latency runtime (in progress)", "")
    bench.pair(ours, other, over_runs=True)
    gap = bench.payload["paired"][f"{ours} vs {other}"]["test"]
    ours_timing = bench.timed(ours, "executorch")
    sections = [
        f"Base: {base_title(bench.payload)}. L1, `--allocation latency --round-to {args.round_to}`; fine-tune: "
        f"{bench.finetune_config.epochs} epochs (`{args.finetune_preset}` recipe).\n",
        f"The ExecuTorch-table model, pruned to {args.target:.0%} of its predicted latency, runs at "
        f"{ratio_spread(ours_timing)} of the base's measured ExecuTorch latency.\n",
        "### Measured latency against the base, every runtime\n", LATENCY_NOTE.format(**bench.payload["latency"]),
        markdown_table(rows := latency_rows(bench), list(rows[0])),
        f"\n### At equal ExecuTorch latency: {ours} against {other}\n",
        markdown_table(rows := finetune_rows(bench, [ours, other]), list(rows[0])),
        f"\nPaired difference ({ours} minus {other}), test images, over {len(seeds)} seeds each: "
        f"{100 * gap['difference']:+.2f} points [{100 * gap['low']:+.2f}, {100 * gap['high']:+.2f}] (95% bootstrap "
        "over seeds and images).\n"]
    bench.save("--allocation latency: an ExecuTorch table against an onnxruntime table, at equal ExecuTorch latency",
               "\n".join(sections), notes=NOTES)


LATENCY_NOTE = """Batch 1, one thread; each ratio is the median over {processes} separate processes of the ratio to
the base in the same process and runtime ({runs} interleaved runs each), [min-max over the processes].
"""

NOTES = """
Which onnxruntime-table model is compared was chosen by its measured ExecuTorch latency ratio alone. Sensitivity
curves (the accuracy side of the allocation) are the same for both tables: L1 on the base's held-out images.
"""


if __name__ == "__main__":
    main()
