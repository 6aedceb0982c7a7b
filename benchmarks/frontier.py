"""How many MACs can go for how much top-1: per-layer allocation (uniform, global, sensitivity; latency to a share
of predicted latency) for L1 and SCP at several targets, before and after the identical short fine-tune, paired
against uniform on the same images.

    python benchmarks/frontier.py --base runs/wide/checkpoint.pt --out benchmarks/results/frontier_wide \\
        --targets 0.5,0.6,0.7,0.8 --finetune 0.7

Every cell is pruned and measured (top-1 right after pruning and with BatchNorm re-measured); the targets in
--finetune also get the fine-tune recipe (--finetune-preset, 3 epochs for quick) and a paired difference against
uniform at the same target; --long-epochs N adds a longer fine-tune distilled from the base (--long-distill-weight)
for the targets in --long-targets. Without --no-timing, every cell is exported and timed in onnxruntime (batch 1,
one thread, interleaved, in --processes separate processes) for its latency against its MAC ratio. Cells already in
<out>.json are kept; sensitivity curves are cached under --work, so they are measured once per method whatever the
targets.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prunedroid.experiment import (  # noqa: E402
    Bench,
    architecture_latencies,
    arguments,
    base_title,
    chosen,
    paired_table,
    percent,
    ratio_spread,
)
from prunedroid.measure.bench import speed_for_macs  # noqa: E402
from prunedroid.measure.report import markdown_table  # noqa: E402
from prunedroid.pruning import Budget, SCPConfig  # noqa: E402
from prunedroid.pruning.budget import ALLOCATIONS  # noqa: E402

METHODS = {"l1": "l1", "scp-cosine": SCPConfig()}


def key_of(target: float, method: str, allocation: str) -> str:
    return f"{target:.2f}/{method}-{allocation}"


def method_of(key: str) -> str:
    """The METHODS name in a key_of key."""
    return key.split("/", 1)[1].rsplit("-", 1)[0]


def run_cells(bench: Bench, methods: list[str], allocations: list[str], targets: list[float],
              finetuned: set[float], round_to: int) -> None:
    for target in targets:
        for name in methods:
            for allocation in allocations:
                # the latency allocation's target is a share of predicted latency; the others' a share of MACs
                measure = "latency_reduction" if allocation == "latency" else "mac_reduction"
                key = key_of(target, name, allocation)
                budget = Budget.of(round_to=round_to, allocation=allocation, **{measure: target})
                bench.measure(key, METHODS[name], budget, target=target, allocation=allocation)
                bench.save("frontier (in progress)", "")
                if target in finetuned:
                    bench.finetune(key, METHODS[name], budget)
                    bench.save("frontier (in progress)", "")
            for allocation in allocations:  # pair() skips a pair unless both cells are fine-tuned
                if allocation not in ("uniform", "latency"):  # a latency target is not uniform's MAC target
                    bench.pair(key_of(target, name, allocation), key_of(target, name, "uniform"))


def long_bench(args, epochs: int, distill_weight: str) -> Bench:
    """The same cells fine-tuned longer and distilled from the base, in <out>-long.json and <work>-long."""
    bench = Bench.open(args.base, f"{args.out}-long", f"{args.work}-long", args.finetune_preset, args.data_dir,
                       args.threads, distill_weight)
    bench.finetune_config = dataclasses.replace(bench.finetune_config, epochs=epochs)
    bench.payload["finetune"] = dataclasses.asdict(bench.finetune_config)
    return bench


def cell_rows(payload: dict, latency: bool) -> list[dict]:
    rows = []
    for key, cell in payload["cells"].items():
        row = {"target": f"{100 * cell['target']:.0f}% " + ("latency" if cell["allocation"] == "latency" else "MACs"),
               "method": method_of(key),
               "allocation": cell["allocation"], "MACs removed": percent(cell["mac_reduction"]),
               "channels": "/".join(map(str, cell["channels"])), "right after pruning": percent(cell["top1_pruned"]),
               "BatchNorm re-measured": percent(cell["top1_recalibrated"]),
               "fine-tuned": percent(cell.get("top1_finetuned"))}
        if latency and "onnx_ms" in cell:
            mac_ratio = 1 - cell["mac_reduction"]
            row.update({"ORT ms": f"{cell['onnx_ms']:.3f}", "latency vs base [min-max]": ratio_spread(cell),
                        "latency / MAC ratio": speed_for_macs(cell["latency_ratio"], mac_ratio,
                                                              cell["latency_ratio_max"])})
        rows.append(row)
    return rows


def within(payload: dict, points: float = 0.5) -> str:
    """Per method and allocation, the largest MAC reduction whose fine-tuned top-1 is within `points` of the base."""
    base, best = payload["base"]["test_top1"], {}
    for key, cell in payload["cells"].items():
        if "top1_finetuned" not in cell:
            continue
        name = (method_of(key), cell["allocation"])
        tried = best.setdefault(name, {"tried": [], "kept": None})
        tried["tried"].append(cell["target"])
        if 100 * (base - cell["top1_finetuned"]) <= points:
            tried["kept"] = max(cell["mac_reduction"], tried["kept"] or 0)
    rows = [{"method": method, "allocation": allocation, "fine-tuned targets": ", ".join(
                f"{100 * t:.0f}%" for t in sorted(found["tried"])),
             f"largest MAC reduction within {points} point": percent(found["kept"]) or "none of them"}
            for (method, allocation), found in best.items()]
    return markdown_table(rows, list(rows[0])) if rows else "No cell was fine-tuned.\n"


def finetuned_top1(cell: dict) -> tuple[float, float] | None:
    """(mean, sd) in % of a cell's fine-tuned top-1 over its seeds (sd 0 with one seed), or None if not fine-tuned."""
    if cell.get("top1_finetuned") is None:
        return None
    values = [100 * v for v in (cell["top1_finetuned"], *cell.get("top1_finetuned_seeds", {}).values())]
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


RECIPE_STYLES = ("-o", "--s", "-.D")  # fine-tuning recipes in order; pruned models are dotted triangles


def onnx_ratio(cell: dict, payload: dict) -> float:
    """A timed cell's onnxruntime latency ratio to the base: the median over timing processes, or for results
    timed in one process before that (frontier_wide.json), its time over the base's."""
    return cell.get("latency_ratio", cell["onnx_ms"] / payload["base_onnx_ms"])


def plot(payloads: dict[str, dict], path: Path) -> None:
    """Top-1 against MACs kept (and against onnxruntime latency when timed): the fine-tuned models on the upper row,
    on an axis of their own, the pruned ones (BatchNorm re-measured) below; one colour per method x allocation,
    one line style and marker per recipe; error bars are the sd over fine-tune seeds where there are several."""
    timed = any("onnx_ms" in cell and "base_onnx_ms" in payload for payload in payloads.values()
                for cell in payload["cells"].values())
    figure, axes = plt.subplots(2, 2 if timed else 1, figsize=(12 if timed else 6.5, 8), squeeze=False)
    first = next(iter(payloads.values()))
    series = sorted({key.split("/", 1)[1] for payload in payloads.values() for key in payload["cells"]})
    colours = dict(zip(series, plt.get_cmap("tab10").colors))
    for index, (recipe, payload) in enumerate(payloads.items()):
        for name in series:
            points = []
            for key, cell in payload["cells"].items():
                if key.split("/", 1)[1] != name:
                    continue
                top1 = (100 * cell["top1_recalibrated"], 0.0) if recipe == "pruned" else finetuned_top1(cell)
                if top1 is not None:
                    latency = onnx_ratio(cell, first) if timed and "onnx_ms" in cell else None
                    points.append((1 - cell["mac_reduction"], *top1, latency))
            if not points:
                continue
            row = 1 if recipe == "pruned" else 0
            style = ":^" if recipe == "pruned" else RECIPE_STYLES[(index - 1) % len(RECIPE_STYLES)]
            columns = [(0, [p[0] for p in points])]
            if timed and all(p[3] is not None for p in points):
                columns.append((1, [p[3] for p in points]))
            for column, xs in columns:
                order = sorted(range(len(points)), key=xs.__getitem__)  # a line runs left to right on each axis
                axes[row][column].errorbar([xs[i] for i in order], [points[i][1] for i in order],
                                           yerr=[points[i][2] for i in order], fmt=style, color=colours[name],
                                           capsize=3, markersize=5, label=f"{name} ({recipe})")
    base = first["base"]["test_top1"] * 100
    for row, title in enumerate(("fine-tuned", "pruned, BN re-measured")):
        for column, label in enumerate(("MACs kept (fraction of the base)", "onnxruntime latency (fraction of base)")
                                       [:len(axes[row])]):
            axis = axes[row][column]
            axis.axhline(base, color="grey", linewidth=0.8)
            if row == 0:
                axis.axhline(base - 0.5, color="grey", linewidth=0.8, linestyle=":")
            axis.set_xlabel(label)
            axis.set_ylabel(f"test top-1 (%), {title}")
            axis.grid(alpha=0.3)
        axes[row][0].legend(fontsize=7)
    figure.suptitle("Allocation frontier: grey = base, dotted = base - 0.5 point; bars = sd over fine-tune seeds")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def replot(out: Path) -> None:
    """The plot again from the committed <out>.json (and <out>-long.json), measuring nothing."""
    payloads = {"pruned": json.loads(out.with_suffix(".json").read_text())}
    payloads[f"{payloads['pruned']['finetune']['epochs']}-epoch recipe"] = payloads["pruned"]
    long = out.parent / f"{out.name}-long.json"
    if long.exists():
        payload = json.loads(long.read_text())
        payloads[f"{payload['finetune']['epochs']} epochs, distilled"] = payload
    plot(payloads, out.with_suffix(".png"))


def main() -> None:
    parser = arguments(__doc__, out="benchmarks/results/frontier_wide", work="runs/bench-frontier")
    parser.add_argument("--methods", default="l1,scp-cosine", help=f"of {', '.join(METHODS)}")
    parser.add_argument("--allocations", default="uniform,global,sensitivity,latency",
                        help=f"of {', '.join(ALLOCATIONS)} (default: those its committed results compare)")
    parser.add_argument("--targets", default="0.5,0.6,0.7,0.8", help="MAC reductions")
    parser.add_argument("--finetune", default="0.7", help="targets to fine-tune: all, none or a comma list")
    parser.add_argument("--round-to", type=int, default=1)
    parser.add_argument("--long-epochs", type=int, default=0, help="a longer distilled fine-tune (0: none)")
    parser.add_argument("--long-targets", default="0.7", help="targets the longer fine-tune runs at")
    parser.add_argument("--long-allocations", default="uniform,sensitivity")
    parser.add_argument("--long-distill-weight", default="0.5")
    parser.add_argument("--no-timing", action="store_true", help="skip timing in onnxruntime")
    parser.add_argument("--runs", type=int, default=300, help="timed runs per architecture")
    parser.add_argument("--processes", type=int, default=5, help="separate timing processes")
    parser.add_argument("--replot", action="store_true", help="only draw <out>.png again from <out>.json")
    args = parser.parse_args()
    if args.replot:
        replot(Path(args.out))
        return
    methods, allocations = args.methods.split(","), args.allocations.split(",")
    targets = [float(t) for t in args.targets.split(",")]
    finetuned = {float(t) for t in chosen(args.finetune, args.targets.split(","))}
    bench = Bench.from_arguments(args)
    run_cells(bench, methods, allocations, targets, finetuned, args.round_to)
    benches = {"3-epoch recipe": bench}
    if args.long_epochs:
        long = long_bench(args, args.long_epochs, args.long_distill_weight)
        long_targets = [float(t) for t in args.long_targets.split(",")]
        run_cells(long, methods, args.long_allocations.split(","), long_targets, set(long_targets), args.round_to)
        benches[f"{args.long_epochs} epochs, distilled"] = long
    if not args.no_timing:
        specs = {key: dataclasses.replace(bench.base.spec, conv_channels=tuple(cell["channels"]))
                 for key, cell in bench.cells.items()}
        latencies = architecture_latencies({"base": bench.base.spec, **specs}, args.runs, args.processes)
        bench.payload["base_onnx_ms"] = latencies["base"]["median_ms"]
        for key in specs:
            latency = latencies[key]
            bench.cells[key].update(onnx_ms=latency.pop("median_ms"), **latency)
    sections = [f"Base: {base_title(bench.payload)}; fine-tune: {bench.finetune_config.epochs} epochs "
                f"(`{args.finetune_preset}` recipe), seed {bench.finetune_config.seed}.\n",
                markdown_table(rows := cell_rows(bench.payload, not args.no_timing), list(rows[0])),
                "\n### Largest MAC reduction within 0.5 point of the base after the 3-epoch fine-tune\n",
                within(bench.payload), paired_table(bench.payload)]
    for recipe, other in list(benches.items())[1:]:
        other.save(f"Frontier, {recipe}", markdown_table(rows := cell_rows(other.payload, False), list(rows[0]))
                   + paired_table(other.payload))
        sections += [f"\n## {recipe} ({other.out}.md)\n", markdown_table(rows, list(rows[0])),
                     within(other.payload), paired_table(other.payload)]
    plot({"pruned": bench.payload, **{recipe: b.payload for recipe, b in benches.items()}},
         Path(args.out).with_suffix(".png"))
    bench.save("Per-layer allocation frontier: uniform, global and sensitivity, L1 and SCP", "\n".join(sections),
               notes=NOTES)


NOTES = """
Allocation (prunedroid/pruning/allocation.py): uniform keeps one removal ratio in every layer; global ranks every
channel of every layer by the method's own scores divided by their layer's mean (L1 norms for L1; for SCP one minus
a channel's highest feature-map similarity in its layer); sensitivity prunes each layer alone with the method at
25/50/75/90%, re-measures BatchNorm on 1,024 held-out training images and measures top-1 on the next 2,048, then
removes channels where the predicted top-1 loss per MAC saved is smallest. Floor: 10% of each layer (--min-keep).
Top-1 is on the 10,000 test images, which no allocation or method sees. Caveat on the pairs' `held-out` column: it
is the held-out training images past SCP's 1,024, and sensitivity allocation chose its channel counts on 2,048 of
them, so for sensitivity cells only the `test` column is an independent sample. latency uses sensitivity's curves
but trims by predicted onnxruntime latency (a lookup table of single layers timed on this machine, in --work) to a
share of that predicted latency, not of MACs: its cells are compared by the measured whole-model latency (ORT ms)
rather than paired against uniform at a MAC target.
"""


if __name__ == "__main__":
    main()
