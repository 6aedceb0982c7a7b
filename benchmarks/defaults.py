"""Which recipe should `invoke pipeline` and `invoke prune` ship? The candidates side by side on one base, at the
pipeline's target (50% fewer MACs, L1 scores, the quick 3-epoch fine-tune): `--allocation` uniform or sensitivity
x `--round-to` 1, 8 or 16.

1. Every candidate is pruned and fine-tuned under each of `--seeds`.
2. Every fine-tuned model (recipe seed) and the base are exported and timed whole in every runtime (batch 1, one
   thread, all models interleaved) in `--processes` separate processes: each latency ratio to the base is the
   median over the processes, with its min-max.
3. The rule, fixed before anything was measured: of the candidates whose *every* timing process puts both the
   ExecuTorch and the onnxruntime latency ratio at or below 1.1x their MAC ratio, the one with the highest mean
   fine-tuned top-1 over the seeds on the held-out training images that nothing analysed (past the images SCP and
   sensitivity allocation measure on). Test images are reported, never chosen by.

    python benchmarks/defaults.py --base runs/verify-quick/base/checkpoint.pt \\
        --data-dir ../shared/cifar-10-batches-py --out benchmarks/results/defaults_quick --work runs/bench-defaults

Cells, fine-tunes and exports resume from <out>.json and --work; --no-timing stops after the fine-tunes.
"""
from __future__ import annotations

import statistics

from prunedroid.experiment import Bench, arguments, base_title, interval, mean_sd, percent, ratio_spread
from prunedroid.measure.report import markdown_table
from prunedroid.pruning import Budget

CURRENT = "uniform/r1"  # what the pipeline shipped before this benchmark
SLACK = 1.1  # a latency ratio may exceed its MAC ratio by this factor
JUDGED_RUNTIMES = ("executorch", "onnxruntime")
RUNTIMES = ("executorch", "onnxruntime", "torchscript-lite", "pytorch")


def key_of(allocation: str, round_to: int) -> str:
    return f"{allocation}/r{round_to}"


def budget_of(cell: dict, target: float) -> Budget:
    return Budget.of(mac_reduction=target, allocation=cell["allocation"], round_to=cell["round_to"])


def finetune_cells(bench: Bench, keys: list[str], target: float, seeds: list[int]) -> None:
    """Prunes, fine-tunes under every seed, and records each seed's top-1 on the unseen held-out images."""
    for key in keys:
        allocation, round_to = key.split("/r")
        bench.measure(key, "l1", Budget.of(mac_reduction=target, allocation=allocation, round_to=int(round_to)),
                      allocation=allocation, round_to=int(round_to))
        for seed in seeds:
            bench.finetune(key, "l1", budget_of(bench.cells[key], target), finetune_seed=seed)
            held_out = bench.cells[key].setdefault("top1_finetuned_unseen", {})
            if str(seed) not in held_out:
                correct = bench.per_image_correct(key, seed, "unseen", bench.unseen_holdout)
                held_out[str(seed)] = correct.float().mean().item()
            bench.save("defaults (in progress)", "")
        if key != CURRENT:
            bench.pair(key, CURRENT, over_runs=True)
            bench.save("defaults (in progress)", "")


def fits(bench: Bench, key: str) -> bool:
    """Every timing process puts the latency ratio at or below SLACK x the MAC ratio, in each judged runtime."""
    mac_ratio = 1 - bench.cells[key]["mac_reduction"]
    return all(bench.timed(key, runtime)["latency_ratio_max"] <= SLACK * mac_ratio for runtime in JUDGED_RUNTIMES)


def chosen_default(bench: Bench) -> str | None:
    """The rule in the module's docstring; None when no candidate fits."""
    fitting = [key for key in bench.cells if fits(bench, key)]
    return max(fitting, key=lambda key: statistics.mean(bench.cells[key]["top1_finetuned_unseen"].values()),
               default=None)


def rows(bench: Bench) -> list[dict]:
    table = []
    for key, cell in bench.cells.items():
        mac_ratio = 1 - cell["mac_reduction"]
        test = [cell["top1_finetuned"], *cell.get("top1_finetuned_seeds", {}).values()]
        row = {"recipe": key, "channels": "/".join(map(str, cell["channels"])), "MACs vs base": f"{mac_ratio:.3f}x",
               "seeds": len(cell["top1_finetuned_unseen"]),
               "unseen top-1, mean (sd)": mean_sd(list(cell["top1_finetuned_unseen"].values())),
               "test top-1, mean (sd)": mean_sd(test)}
        if "latency" in bench.payload:
            for runtime in RUNTIMES:
                row[f"{runtime} latency vs base"] = ratio_spread(bench.timed(key, runtime))
            row[f"within {SLACK}x MACs (ET and ORT, every process)"] = "yes" if fits(bench, key) else "no"
        table.append(row)
    return table


def paired_rows(bench: Bench) -> list[dict]:
    table = []
    for name, result in bench.payload.get("paired", {}).items():
        row = {"recipe": name.replace(" vs ", " minus "), "seeds": len(result["seeds"])}
        for split, label in (("unused_holdout", "held-out"), ("test", "test")):
            row[label] = interval(result[split])
        table.append(row)
    return table


def main() -> None:
    parser = arguments(__doc__, out="benchmarks/results/defaults_quick", work="runs/bench-defaults")
    parser.add_argument("--target", type=float, default=0.5, help="share of MACs removed (the pipeline's default)")
    parser.add_argument("--allocations", default="uniform,sensitivity")
    parser.add_argument("--round-to", default="1,8,16", help="channel multiples to compare")
    parser.add_argument("--seeds", default="0,1,2", help="fine-tune seeds of every candidate")
    parser.add_argument("--processes", type=int, default=5, help="separate timing processes")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per model and runtime in each process")
    parser.add_argument("--no-timing", action="store_true", help="stop after the fine-tunes")
    args = parser.parse_args()
    bench = Bench.from_arguments(args)
    keys = [key_of(allocation, int(multiple)) for allocation in args.allocations.split(",")
            for multiple in args.round_to.split(",")]
    if CURRENT not in keys:
        keys.insert(0, CURRENT)
    finetune_cells(bench, keys, args.target, [int(seed) for seed in args.seeds.split(",")])
    if args.no_timing:
        return
    bench.time_exports(lambda cell: budget_of(cell, args.target), args.data_dir, args.processes, args.runs,
                       "defaults (in progress)")
    choice = chosen_default(bench)
    bench.payload["chosen"] = choice
    sections = [
        f"Base: {base_title(bench.payload)}. L1, {args.target:.0%} fewer MACs; fine-tune: "
        f"{bench.finetune_config.epochs} epochs (`{args.finetune_preset}` recipe) under each seed.\n",
        f"Chosen by the rule above: **{choice or 'none fits'}**.\n",
        LATENCY_NOTE.format(**bench.payload["latency"]),
        markdown_table(table := rows(bench), list(table[0])),
        f"\n### Each recipe minus {CURRENT} (points of top-1, 95% bootstrap over seeds and images)\n",
        markdown_table(table := paired_rows(bench), list(table[0]))]
    notes = NOTES.format(slack=SLACK, percent=percent(args.target), unseen=len(bench.unseen_holdout))
    bench.save("Which recipe the pipeline ships: allocation x channel rounding at 50% fewer MACs",
               "\n".join(sections), notes=notes)


LATENCY_NOTE = """Latency: batch 1, one thread, fp32; each ratio is the median over {processes} separate processes
of the ratio to the base in the same process and runtime ({runs} interleaved runs each), [min-max over the
processes]. Timed models: the recipe seed's fine-tune (latency does not depend on the weights' values).
"""

NOTES = """
Rule (fixed before measuring): a recipe fits when its ExecuTorch and onnxruntime latency ratios stay at or below
{slack}x its MAC ratio in every timing process; of those, the highest mean top-1 on the {unseen:,} held-out training
images past the 3,072 that sensitivity allocation measures on (`unseen`) wins. The paired table's `held-out` column
is the held-out images past SCP's 1,024 (sensitivity chose its channel counts on 2,048 of them, so for sensitivity
recipes only `test` and `unseen` are independent samples). Target: {percent} of MACs removed.
"""


if __name__ == "__main__":
    main()
