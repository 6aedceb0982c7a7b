"""Every pruning method from one base checkpoint, at equal MAC reductions, on real CIFAR-10: top-1 right after
pruning, with BatchNorm re-measured on the evaluation images, and after one identical short fine-tune; MACs, params,
.ptl and .onnx size and onnxruntime batch-1 latency of the model each method leaves. K-means with automatic K picks
its own MACs and is reported at the point it lands.

    python benchmarks/compare_methods.py --base runs/quick/checkpoint.pt --out benchmarks/results/compare_quick

Cells already in <out>.json are kept (an interrupted run resumes); checkpoints and exports go under --work.
Fine-tunes finished under --work are picked up rather than redone, so a second process given its own --out, the
same --work and other --methods can fine-tune side by side; a final run on the main --out then records them.
Latencies are timed all together at the end of each run: pass --no-timing while other jobs load the machine, and
re-time once it is idle (--finetune none).
Writes <out>.json, <out>.md and <out>.png. Run from the project root with the package installed.
"""
from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from prunedroid.experiment import Bench, arguments, base_title, chosen, paired_table, percent  # noqa: E402
from prunedroid.measure.report import markdown_table  # noqa: E402
from prunedroid.pruning import Budget, KMeansConfig, SCPConfig, TorchPruningConfig  # noqa: E402
from prunedroid.pruning.similarity import CRITERIA  # noqa: E402

LIBRARY = ("tp-magnitude", "tp-taylor")


def methods() -> dict[str, object]:
    """Methods compared at each MAC target."""
    chosen: dict[str, object] = {"l1": "l1", "random": "random", "tp-magnitude": TorchPruningConfig(),
                                 "tp-taylor": TorchPruningConfig(importance="taylor"), "kmeans": KMeansConfig(),
                                 "kmeans-blog": KMeansConfig(keep="random")}
    for criterion in CRITERIA:
        chosen[f"scp-{criterion}"] = SCPConfig(criterion=criterion)
        chosen[f"scp-{criterion}-none"] = SCPConfig(criterion=criterion, combine="none")
    chosen["scp-cosine-bn"] = SCPConfig(loss_at="bn")
    chosen["scp-cosine-norm"] = SCPConfig(keep="norm")
    return chosen


FREE = {"kmeans-elbow": KMeansConfig(clusters="elbow"), "kmeans-silhouette": KMeansConfig(clusters="silhouette")}


def main() -> None:
    parser = arguments(__doc__, work="runs/compare", out="benchmarks/results/compare_quick")
    parser.add_argument("--targets", default="0.3,0.5,0.7", help="MAC reductions")
    parser.add_argument("--methods", default=",".join([*methods(), *FREE]), help="which methods (default: all)")
    parser.add_argument("--finetune", default="all",
                        help="which methods get the fine-tune: all, none, or a comma list")
    parser.add_argument("--timing", action=argparse.BooleanOptionalAction, default=True,
                        help="re-time every architecture's onnxruntime latency at the end (--no-timing keeps the "
                             "latencies already in <out>.json: for runs on a machine busy with other jobs)")
    args = parser.parse_args()
    wanted = args.methods.split(",")
    unknown = [name for name in wanted if name not in methods() and name not in FREE]
    tuned = chosen(args.finetune, wanted)
    unknown += [name for name in tuned if name not in wanted]
    if unknown:
        parser.error(f"unknown or unselected methods {', '.join(unknown)}; --methods takes "
                     f"{', '.join([*methods(), *FREE])} and --finetune those of --methods")
    bench = Bench.from_arguments(args)
    cells = [(f"{float(t):.2f}/{name}", method, Budget.of(mac_reduction=float(t)), float(t))
             for t in args.targets.split(",") for name, method in methods().items() if name in wanted]
    cells += [(f"free/{name}", method, None, None) for name, method in FREE.items() if name in wanted]

    def save() -> None:
        bench.save(f"Pruning methods at equal MACs: {base_title(bench.payload)}", tables(bench.payload), NOTES)
        plot(bench.payload, bench.out.with_suffix(".png"))

    for key, method, budget, target in cells:
        bench.measure(key, method, budget, target=target)
        save()
    for key, method, budget, _ in cells:  # target by target, in --targets order
        if key.split("/", 1)[1] in tuned:
            bench.finetune(key, method, budget)
        bench.deploy(key, method, budget)
        save()
    for key, _, _, target in cells:  # every fine-tuned SCP cell against L1 and the library's criteria
        if key.split("/", 1)[1].startswith("scp-"):
            for reference in (f"{target:.2f}/{name}" for name in ("l1", *LIBRARY)):
                if reference in bench.cells:
                    bench.pair(key, reference)
    if args.timing:
        bench.time_onnx([key for key, *_ in cells])
    save()


NOTES = """
`pruned`: test top-1 right after pruning. `BN re-measured`: BatchNorm statistics re-measured on 1,024 held-out
training images, no weights changed (SCP does this itself, layer by layer). `fine-tuned`: one identical short
fine-tune (recipe in the JSON). Sizes and latency are of the model each method leaves (fine-tuned where it was):
`.ptl` TorchScript Lite, `.onnx` ONNX, `ORT ms` the median of 200 batch-1 onnxruntime calls on one thread, the
median over 5 separate processes; each distinct architecture is timed once per process, all interleaved, so methods
at one MAC target (same channels per layer) share it. A blank `fine-tuned` means the method was left out of
--finetune (see the command).
`scp-<criterion>`: SCP with least-squares weight combination (default options); `-none` without combination;
`scp-cosine-bn`: the pruning loss measured after the next layer's BatchNorm (`--loss-at bn`); `scp-cosine-norm`: of
each similar pair the filter with the larger L1 norm stays (`--keep norm`), not the costlier one to remove.
`tp-*`: Torch-Pruning's group magnitude (L2) and Taylor importance, cut by our surgery. `kmeans`: K from the budget,
member nearest the centroid; `kmeans-blog`: random member; `free/*`: K chosen per layer, at whatever MACs it lands.
"""


def tables(payload: dict) -> str:
    cells = payload["cells"]
    if not cells:
        return "(no cells yet)\n"
    megabytes = lambda value: "" if value is None else f"{value / 1e6:.2f}"
    rows = [{"MAC target": "free" if c["target"] is None else f"{100 * c['target']:.0f}%",
             "method": key.split("/", 1)[1], "MACs removed": percent(c["mac_reduction"]),
             "params": f"{c['params'] / 1e6:.3f}M", "pruned": percent(c["top1_pruned"]),
             "BN re-measured": percent(c["top1_recalibrated"]), "fine-tuned": percent(c.get("top1_finetuned")),
             ".ptl MB": megabytes(c.get("ptl_bytes")), ".onnx MB": megabytes(c.get("onnx_bytes")),
             "ORT ms": "" if "onnx_ms" not in c else f"{c['onnx_ms']:.3f}"} for key, c in cells.items()]
    return markdown_table(rows, list(rows[0])) + "\n" + answers(cells) + paired_table(payload)


def answers(cells: dict) -> str:
    """Per MAC target: which method keeps the most, before and after fine-tuning, and SCP against L1 and the
    library's criteria (points of top-1)."""
    lines = []
    for target in sorted({c["target"] for c in cells.values() if c["target"] is not None}):
        here = {key.split("/", 1)[1]: c for key, c in cells.items() if c["target"] == target}
        for column, label in (("top1_pruned", "right after pruning"),
                              ("top1_recalibrated", "with BatchNorm re-measured"),
                              ("top1_finetuned", "after fine-tuning")):
            scored = {name: c[column] for name, c in here.items() if c.get(column) is not None}
            if not scored:
                continue
            best = max(scored, key=scored.get)
            scp = [name for name in scored if name.startswith("scp-") and not name.endswith("-none")]
            line = f"- {100 * target:.0f}% of MACs, {label}: best {best} ({percent(scored[best])})"
            if scp:
                top = max(scp, key=scored.get)
                line += "; " + ", ".join(f"{top} vs {other} {100 * (scored[top] - scored[other]):+.2f} points"
                                         for other in ("l1", *LIBRARY) if other in scored)
            behind = [name for name in scored if scored[best] - scored[name] > 0.01]
            if column == "top1_finetuned" and behind:
                line += "; more than 1 point behind the best: " + ", ".join(
                    f"{name} ({percent(scored[name])})" for name in sorted(behind, key=scored.get))
            lines.append(line)
    return "\n".join(lines) + "\n" if lines else ""


def plot(payload: dict, path) -> None:
    """Top-1 against MACs removed, one line per method: right after pruning, with BatchNorm re-measured, and after
    fine-tuning, side by side."""
    cells = payload["cells"]
    figure, axes = plt.subplots(1, 3, figsize=(18, 5), sharex=True)
    axes[1].sharey(axes[0])  # fine-tuned top-1 sits in a narrow band: its panel gets its own scale
    panels = {"top1_pruned": "right after pruning", "top1_recalibrated": "BatchNorm re-measured, no training",
              "top1_finetuned": "after the short fine-tune"}
    for axis, (column, label) in zip(axes, panels.items()):
        names = sorted({key.split("/", 1)[1] for key in cells})
        for index, name in enumerate(names):
            points = sorted((100 * c["mac_reduction"], 100 * c[column]) for key, c in cells.items()
                            if key.split("/", 1)[1] == name and c.get(column) is not None)
            if points:
                style = "o" if len(points) == 1 else "o-"
                axis.plot(*zip(*points), style, label=name, color=plt.cm.tab20(index % 20),
                          linewidth=2.5 if name in ("scp-cosine", "l1") else 1)
        axis.set_title(label)
        axis.set_xlabel("MACs removed (%)")
        axis.grid(alpha=0.3)
    for axis in (axes[0], axes[2]):
        axis.set_ylabel("test top-1 (%), CIFAR-10, 10,000 images")
    handles, labels = axes[0].get_legend_handles_labels()  # every method has a point before fine-tuning
    figure.legend(handles, labels, fontsize=8, loc="center right")
    figure.suptitle(f"Pruning methods: {base_title(payload)}", fontsize=10)
    figure.tight_layout(rect=(0, 0, 0.88, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
