"""SCP's threshold mode swept, as in the report's figures: for each similarity criterion and each threshold, the
MACs left, top-1 right after pruning and after one identical short fine-tune, and the channels each layer keeps.

    python benchmarks/sweep_thresholds.py --base runs/quick/checkpoint.pt --out benchmarks/results/sweep_quick

Writes <out>.json, <out>.md and three plots: <out>-accuracy.png (threshold vs top-1), <out>-macs.png (threshold vs
MACs removed) and <out>-layers.png (channels per layer at --layers-at). Cells already in <out>.json are kept.
Run from the project root with the package installed.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from prunedroid.errors import PrunedroidError  # noqa: E402
from prunedroid.experiment import Bench, arguments, base_title, chosen, percent  # noqa: E402
from prunedroid.measure.report import markdown_table  # noqa: E402
from prunedroid.pruning import SCPConfig  # noqa: E402
from prunedroid.pruning.similarity import CRITERIA  # noqa: E402


def main() -> None:
    parser = arguments(__doc__, work="runs/sweep", out="benchmarks/results/sweep_quick")
    parser.add_argument("--criteria", default=",".join(CRITERIA))
    parser.add_argument("--thresholds", default=",".join(f"{t:.2f}" for t in np.arange(0.05, 0.951, 0.05)))
    parser.add_argument("--finetune", default="all", help="criteria whose cells get the fine-tune: all, none or a list")
    parser.add_argument("--finetune-thresholds", default="all", help="at which thresholds: all or a list")
    parser.add_argument("--layers-at", type=float, default=0.5, help="threshold of the per-layer channels plot")
    args = parser.parse_args()
    bench = Bench.from_arguments(args)
    criteria, thresholds = args.criteria.split(","), [float(t) for t in args.thresholds.split(",")]
    cells = {f"{criterion}/{threshold:.2f}": SCPConfig(criterion=criterion, threshold=threshold)
             for criterion in criteria for threshold in thresholds}

    def save() -> None:
        bench.save(f"SCP threshold sweep: {base_title(bench.payload)}", table(bench.payload), NOTES)
        plot(bench.payload, bench.out, args.layers_at)

    for key, method in cells.items():
        try:
            bench.measure(key, method, None, criterion=method.criterion, threshold=method.threshold)
        except PrunedroidError as error:  # e.g. a threshold so low every layer would lose every channel
            print(key, "skipped:", error, flush=True)
            continue
        save()
    tuned = chosen(args.finetune, criteria)
    tuned_at = thresholds if args.finetune_thresholds == "all" else [float(t) for t in
                                                                     args.finetune_thresholds.split(",")]
    for key, method in cells.items():
        if key in bench.cells and method.criterion in tuned and method.threshold in tuned_at:
            bench.finetune(key, method, None)
            save()


NOTES = """
SCP in threshold mode (the report's): every nearest-neighbour pair (k = 3) more similar than the threshold is pruned,
layer by layer, with least-squares weight combination and BatchNorm re-measured (default options); similarities are
1/(1+d) of the per-layer normalised distance (cosine clipped to [0, 1]). `pruned`: test top-1 right after pruning;
`fine-tuned`: after one identical short fine-tune (recipe in the JSON).
"""


def table(payload: dict) -> str:
    rows = [{"criterion": c["criterion"], "threshold": f"{c['threshold']:.2f}",
             "MACs removed": percent(c["mac_reduction"]), "params": f"{c['params'] / 1e6:.3f}M",
             "pruned": percent(c["top1_pruned"]), "fine-tuned": percent(c.get("top1_finetuned"))}
            for c in payload["cells"].values()]
    return markdown_table(rows, list(rows[0])) if rows else "(no cells yet)\n"


def plot(payload: dict, stem, layers_at: float) -> None:
    """The report's three figures for every criterion: threshold vs top-1, threshold vs MACs removed, and the
    channels each layer keeps at one threshold (the unpruned base for reference)."""
    cells = list(payload["cells"].values())
    criteria = sorted({c["criterion"] for c in cells})
    title = base_title(payload)
    curves = [("accuracy", "test top-1 (%), CIFAR-10, 10,000 images",
               [("top1_pruned", "--", "right after pruning"), ("top1_finetuned", "-", "fine-tuned")]),
              ("macs", "MACs removed (%)", [("mac_reduction", "-", None)])]
    for suffix, ylabel, series in curves:
        figure, axis = plt.subplots(figsize=(7, 4.5))
        for index, criterion in enumerate(criteria):
            mine = sorted((c for c in cells if c["criterion"] == criterion), key=lambda c: c["threshold"])
            for column, style, what in series:
                points = [(c["threshold"], 100 * c[column]) for c in mine if c.get(column) is not None]
                if points:
                    axis.plot(*zip(*points), style, marker="o", markersize=3, color=plt.cm.tab10(index),
                              label=criterion if what is None else f"{criterion}, {what}")
        axis.set_xlabel("similarity threshold")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
        axis.set_title(f"SCP threshold vs {'top-1' if suffix == 'accuracy' else 'MACs'}: {title}", fontsize=8)
        figure.tight_layout()
        figure.savefig(f"{stem}-{suffix}.png", dpi=120)
        plt.close(figure)
    at = [c for c in cells if abs(c["threshold"] - layers_at) < 1e-9]
    if at:
        figure, axis = plt.subplots(figsize=(8, 4.5))
        width = 0.8 / len(at)
        for index, cell in enumerate(sorted(at, key=lambda c: c["criterion"])):
            layers = np.arange(len(cell["channels"]))
            axis.bar(layers + index * width, cell["channels"], width, label=cell["criterion"],
                     color=plt.cm.tab10(criteria.index(cell["criterion"])))
        base = payload["base"].get("channels")
        if base:
            axis.step(np.arange(len(base)) + 0.4, base, where="mid", color="black", label="unpruned")
        axis.set_xlabel("conv layer")
        axis.set_ylabel("channels kept")
        axis.legend(fontsize=7)
        axis.set_title(f"Channels per layer at threshold {layers_at:.2f}: {title}", fontsize=8)
        figure.tight_layout()
        figure.savefig(f"{stem}-layers.png", dpi=120)
        plt.close(figure)


if __name__ == "__main__":
    main()
