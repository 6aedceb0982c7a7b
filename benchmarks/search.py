"""`--allocation search` against sensitivity and uniform allocation: L1 at each MAC target, the same fine-tune for
every allocation under several seeds, each minus the base and search minus sensitivity, paired over images and
seeds, with the time each allocation took to decide (the search's candidates included).

    python benchmarks/search.py --base runs/wide3/checkpoint.pt --out benchmarks/results/search_wide \\
        --work runs/bench-search-wide --targets 0.6,0.7 --epochs 8 --distill-weight 0.5 --seeds 0,1,2

Cells resume from <out>.json; the search's candidate scores and the sensitivity curves are cached under --work.
"""
from __future__ import annotations

import dataclasses

import torch

from prunedroid.experiment import Bench, arguments, base_title, interval, mean_sd, percent
from prunedroid.measure.report import markdown_table
from prunedroid.pruning import Budget

ALLOCATIONS = ("uniform", "sensitivity", "search")


def budget_of(target: float, allocation: str, round_to: int, candidates: int) -> Budget:
    extra = {"candidates": candidates} if allocation == "search" else {}
    return Budget.of(mac_reduction=target, allocation=allocation, round_to=round_to, **extra)


def run_cell(bench: Bench, key: str, budget: Budget, seeds: list[int]) -> None:
    """Prunes (unless done), fine-tunes under every seed and judges the seeds against the base."""
    cell = bench.measure(key, "l1", budget, target=budget.target, allocation=budget.allocation)
    for seed in seeds:
        bench.finetune(key, "l1", budget, finetune_seed=seed)
        bench.save("search (in progress)", "")
    if cell.get("judged_seeds") != seeds:
        tables = {name: torch.stack([bench.per_image_correct(key, seed, name, split) for seed in seeds])
                  for name, split in bench.judged_splits.items() if len(split)}  # a small holdout has no unseen
        cell.update(bench.against_base(tables), judged_seeds=seeds)


def rows(bench: Bench) -> list[dict]:
    return [{"target": f"{100 * cell['target']:.0f}%", "allocation": cell["allocation"],
             "MACs removed": percent(cell["mac_reduction"]), "deciding (s)": f"{cell['prune_seconds']:.0f}",
             "seeds": len(cell["judged_seeds"]), "test top-1, mean (sd)": mean_sd(cell["per_seed"]["test"]),
             "minus base, test": interval(cell["vs_base"]["test"]),
             "minus base, unseen": interval(cell["vs_base"]["unseen"]) if "unseen" in cell["vs_base"] else "",
             "channels": "/".join(map(str, cell["channels"]))}
            for cell in bench.cells.values()]


def main() -> None:
    parser = arguments(__doc__, out="benchmarks/results/search_quick", work="runs/bench-search")
    parser.add_argument("--targets", default="0.6", help="MAC reductions")
    parser.add_argument("--epochs", type=int, default=None, help="fine-tune epochs (default: the preset's)")
    parser.add_argument("--seeds", default="0,1,2", help="fine-tune seeds of every cell")
    parser.add_argument("--candidates", type=int, default=32, help="allocations the search scores")
    parser.add_argument("--round-to", type=int, default=1)
    parser.add_argument("--allocations", default=",".join(ALLOCATIONS), help="search and the allocations it is "
                                                                            "compared with")
    args = parser.parse_args()
    allocations = args.allocations.split(",")
    bench = Bench.from_arguments(args)
    if args.epochs:
        bench.finetune_config = dataclasses.replace(bench.finetune_config, epochs=args.epochs)
        bench.payload["finetune"] = dataclasses.asdict(bench.finetune_config)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    for target in (float(t) for t in args.targets.split(",")):
        for allocation in allocations:
            run_cell(bench, f"{target:.2f}/{allocation}", budget_of(target, allocation, args.round_to,
                                                                     args.candidates), seeds)
            bench.save("search (in progress)", "")
        for reference in (allocation for allocation in ("sensitivity", "uniform") if allocation in allocations):
            bench.pair(f"{target:.2f}/search", f"{target:.2f}/{reference}", over_runs=True)
    paired = [{"comparison": name, "seeds": len(result["seeds"]), "test": interval(result["test"]),
               "held-out": interval(result["unused_holdout"]) if "unused_holdout" in result else ""}
              for name, result in bench.payload.get("paired", {}).items()]
    weight = bench.finetune_config.distill_weight
    text = (f"Base: {base_title(bench.payload)}. L1 scores, `--round-to {args.round_to}`, search over "
            f"{args.candidates} candidates; fine-tune: {bench.finetune_config.epochs} epochs"
            + (f", distilled from the base (weight {weight})" if weight else "") + ".\n\n"
            + markdown_table(table := rows(bench), list(table[0]))
            + "\n### Search minus the other allocations, paired over images and seeds\n\n"
            + markdown_table(paired, list(paired[0])))
    others = [allocation for allocation in allocations if allocation != "search"]
    bench.save(f"Allocation by search against {' and '.join(others)} allocation", text, NOTES)


NOTES = """
`deciding (s)`: the cell's pruning time, which for sensitivity includes measuring its curves and for search scoring
its candidates (each cached under --work: a rerun reads them, so only a first run's time counts). `minus base`: the
cell's top-1 minus the base's on the same images, in points, with a 95% bootstrap interval over images and seeds.
`unseen`: held-out training images past the 3,072 that sensitivity and search measure on, which nothing trained on
or chose by. In the paired table, `held-out` is every held-out image past SCP's evaluation set, which includes the
3,072 both allocations chose on: read `test` there.
"""


if __name__ == "__main__":
    main()
