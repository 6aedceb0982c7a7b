"""Residual and depthwise networks pruned: L1, SCP and Torch-Pruning's group-norm criterion, each with uniform and
sensitivity allocation, at one MAC reduction of a trained ResNet-56 or MobileNetV2 (any registered model); top-1 right
after pruning, with BatchNorm re-measured, and after the identical short fine-tune, paired on the test images
against the base and against each other; every export format's size and its batch-1 latency ratio in each runtime
(median of separate processes, with their spread) beside its MAC ratio.

    python benchmarks/architectures.py --base runs/resnet56-quick/checkpoint.pt --target 0.5 \\
        --out benchmarks/results/architectures_resnet56_quick --work runs/bench-arch-resnet56

Cells already in <out>.json are kept and fine-tunes under --work resume, so an interrupted run continues.
Run with --no-timing while other jobs load the machine, then once more without it on an idle machine.
"""
from __future__ import annotations

from pathlib import Path

import torch

from prunedroid.deploy.export import export_checkpoint
from prunedroid.deploy.formats import FORMATS
from prunedroid.experiment import Bench, arguments, base_title, percent, repeated_latencies
from prunedroid.measure.bench import paired_difference
from prunedroid.measure.report import markdown_table
from prunedroid.pruning import Budget, SCPConfig, TorchPruningConfig
from prunedroid.training.train import evaluate

# Torch-Pruning's group-norm criterion: the L2 norm over every weight a channel group couples
# (GroupMagnitudeImportance, p=2; `--method torch-pruning --importance magnitude`).
METHODS = {"l1": "l1", "scp": SCPConfig(), "tp-group-norm": TorchPruningConfig(importance="magnitude")}
ALLOCATIONS = ("uniform", "sensitivity")
RUNTIMES = ("pytorch", "torchscript-lite", "onnxruntime", "executorch")


def key_of(method: str, allocation: str) -> str:
    return f"{method}/{allocation}"


def run_cells(bench: Bench, target: float, methods: list[str]) -> None:
    for method in methods:
        config = METHODS[method]
        for allocation in ALLOCATIONS:
            key, budget = key_of(method, allocation), Budget.of(mac_reduction=target, allocation=allocation)
            bench.measure(key, config, budget, target=target, allocation=allocation)
            bench.save("architectures (in progress)", "")
            bench.finetune(key, config, budget)
            bench.save("architectures (in progress)", "")


def pair_all(bench: Bench) -> None:
    """Sensitivity against uniform for each method; SCP and group-norm against L1 for each allocation; every cell
    against the base (its fine-tuned top-1 minus the base's on the same test images)."""
    pairs = [(key_of(method, "sensitivity"), key_of(method, "uniform")) for method in METHODS]
    pairs += [(key_of(method, allocation), key_of("l1", allocation))
              for allocation in ALLOCATIONS for method in ("scp", "tp-group-norm")]
    for key, reference in pairs:
        if key in bench.cells and reference in bench.cells:  # a run of some --methods only
            bench.pair(key, reference)
    base_correct = evaluate(bench.base, bench.data.test, per_image=True)["correct"]
    seed = bench.finetune_config.seed
    for key in bench.cells:
        cell_correct = bench.per_image_correct(key, seed, "test", bench.data.test)
        bench.cells[key]["vs_base"] = paired_difference(cell_correct[None], base_correct[None])


def deploy_and_time(bench: Bench, data_dir: str | None, processes: int, runs: int) -> None:
    """Exports the base and every fine-tuned cell (.ptl, .onnx, .pte, each checked in its runtime), then times them
    all together in `processes` separate processes."""
    base_export = export_checkpoint(bench.base_path, bench.data.test, bench.work / "base-export", "base")
    bench.payload["base"].update({f"{kind}_bytes": base_export.report[f"{kind}_bytes"] for kind in FORMATS})
    names = {}
    for key in bench.cells:
        method, allocation = key.split("/")
        budget = Budget.of(mac_reduction=bench.cells[key]["target"], allocation=allocation)
        names[key] = key.replace("/", "-")
        bench.deploy(key, METHODS[method], budget, name=names[key])
    bench.save("architectures (in progress)", "")
    sidecars = [base_export.sidecar, *(Path(bench.cells[key]["sidecar"]) for key in bench.cells)]
    timed = repeated_latencies(sidecars, data_dir, processes, runs)
    bench.payload["latency"] = {"processes": processes, "runs": runs, "threads": 1, "rows": timed}
    for key, name in names.items():
        bench.cells[key]["latency"] = {runtime: timed[f"{name}/{runtime}"] for runtime in RUNTIMES
                                       if f"{name}/{runtime}" in timed}


def interval(gap: dict) -> str:
    return f"{100 * gap['difference']:+.2f} [{100 * gap['low']:+.2f}, {100 * gap['high']:+.2f}]"


def accuracy_rows(payload: dict) -> list[dict]:
    return [{"method": key.split("/")[0], "allocation": cell["allocation"],
             "MACs removed": percent(cell["mac_reduction"]), "params removed": percent(cell["param_reduction"]),
             "right after pruning": percent(cell["top1_pruned"]),
             "BN re-measured": percent(cell["top1_recalibrated"]),
             "fine-tuned": percent(cell.get("top1_finetuned")),
             "fine-tuned vs base, points [95%]": interval(cell["vs_base"]) if "vs_base" in cell else "",
             "fine-tune s": cell.get("finetune_seconds", "")} for key, cell in payload["cells"].items()]


def pair_rows(payload: dict) -> list[dict]:
    return [{"fine-tuned": key, "minus": reference, "test images, points [95%]": interval(result["test"]),
             "unused held-out images, points [95%]": interval(result["unused_holdout"])
             if "unused_holdout" in result else ""}
            for name, result in payload["paired"].items() for key, reference in [name.split(" vs ")]]


def deploy_rows(payload: dict) -> list[dict]:
    rows = []
    base = payload["base"]
    for key, cell in payload["cells"].items():
        if "latency" not in cell:
            continue
        row = {"model": key, "MACs vs base": f"{1 - cell['mac_reduction']:.2f}x",
               **{f".{kind} size vs base": f"{cell[f'{kind}_bytes'] / base[f'{kind}_bytes']:.2f}x"
                  for kind in FORMATS}}
        for runtime, timed in cell["latency"].items():
            row[f"{runtime} latency vs base"] = (f"{timed['latency_ratio']:.2f}x "
                                                 f"[{timed['latency_ratio_min']:.2f}-{timed['latency_ratio_max']:.2f}]")
        rows.append(row)
    return rows


def main() -> None:
    parser = arguments(__doc__, out="benchmarks/results/architectures_resnet56_quick", work="runs/bench-arch")
    parser.add_argument("--target", type=float, default=0.5, help="share of MACs removed")
    parser.add_argument("--processes", type=int, default=5, help="separate timing processes")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per model and runtime in each process")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="which methods (a second process given its own --out, the same --work and other methods "
                             "fine-tunes side by side; the main run then picks its fine-tunes up)")
    parser.add_argument("--no-timing", action="store_true", help="skip export and timing")
    args = parser.parse_args()
    bench = Bench.from_arguments(args)
    torch.manual_seed(0)
    run_cells(bench, args.target, args.methods.split(","))
    pair_all(bench)
    if not args.no_timing:
        deploy_and_time(bench, args.data_dir, args.processes, args.runs)
    payload = bench.payload
    sections = [f"Base: {base_title(payload)}; {args.target:.0%} of its MACs removed; fine-tune: "
                f"{bench.finetune_config.epochs} epoch(s) (`{args.finetune_preset}` recipe), seed "
                f"{bench.finetune_config.seed}.\n", markdown_table(rows := accuracy_rows(payload), list(rows[0])),
                "\n### Paired differences after the fine-tune\n", PAIRED_NOTE,
                markdown_table(rows := pair_rows(payload), list(rows[0]))]
    if deploy_rows(payload):
        timing = payload["latency"]
        base_ms = ", ".join(f"{runtime} {timing['rows'][f'base/{runtime}']['median_ms']:.3f} ms"
                            for runtime in RUNTIMES if f"base/{runtime}" in timing["rows"])
        sections += [f"\n### Exports: size and batch-1 latency against the base\n\nBase: {base_ms} (batch 1, "
                     f"{timing['threads']} thread, median of {timing['processes']} processes). Each ratio: the "
                     f"median over {timing['processes']} separate processes of the ratio to the base in the same "
                     f"process and runtime ({timing['runs']} interleaved runs each), [min-max over the processes].\n",
                     markdown_table(rows := deploy_rows(payload), list(rows[0]))]
    bench.save(f"{base_title(payload).split(' width')[0]}: L1, SCP and group-norm, uniform and sensitivity, "
               f"{args.target:.0%} fewer MACs", "\n".join(sections), notes=NOTES)


PAIRED_NOTE = """Each row: the first model's fine-tuned top-1 minus the second's on the same images, in points, with
a 95% bootstrap interval over the images (one fine-tune seed each: no seed variance). Unused held-out images: the
training images the base held out past the 1,024 SCP analyses - but sensitivity allocation chose its channel counts
on 2,048 of them, so for sensitivity rows only the test column is an independent sample.
"""

NOTES = """
Methods: l1 (each channel's filter L1 norm), scp (similarity-aware channel pruning, cosine criterion, the
project's defaults) and tp-group-norm (Torch-Pruning's group L2-norm importance over everything a channel group
couples). In a residual network the channels added together form one group and are cut together, so a stage's
residual stream is pruned as one (prunedroid/pruning/groups.py). Allocation: uniform removes one share of every
group; sensitivity prunes each group alone at 25/50/75/90%, measures top-1 on held-out training images and removes
channels where the predicted loss per MAC saved is smallest (10% floor per group). Test images choose nothing.
Paired intervals: 95% bootstrap over the test images of one fine-tune seed each; they carry no seed variance.
"""


if __name__ == "__main__":
    main()
