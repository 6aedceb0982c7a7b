"""K-means filter clustering on real CIFAR-10: the blog's setting (K = half the filters in every conv layer, a random
member kept), its fixes (the member nearest the centroid, weight combination, K chosen per layer by elbow or
silhouette), and k-means against L1 and SCP at equal MACs. Top-1 right after pruning, with BatchNorm re-measured on
the evaluation images, and after one identical short fine-tune.

    python benchmarks/kmeans_settings.py --base runs/quick/checkpoint.pt --out benchmarks/results/kmeans_quick

Cells already in <out>.json are kept (an interrupted run resumes); fine-tuned checkpoints go under --work.
Run from the project root with the package installed (pip install -e .).
"""
from __future__ import annotations

from sklearn.metrics import silhouette_score
from torch import nn

from prunedroid.experiment import Bench, arguments, base_title, percent
from prunedroid.measure.report import markdown_table
from prunedroid.pruning import Budget, KMeansConfig, SCPConfig
from prunedroid.pruning.kmeans import filter_points, fit, spread

HALF = Budget.of(ratio=0.5)  # the blog's K = N/2 in every layer


def settings(target: float) -> dict[str, tuple[object, Budget | None, bool]]:
    """name -> (method, budget, fine-tune it)."""
    equal = Budget.of(mac_reduction=target)
    return {
        "kmeans-blog": (KMeansConfig(keep="random"), HALF, True),
        "kmeans-half-centroid": (KMeansConfig(), HALF, True),
        "kmeans-half-centroid-sum": (KMeansConfig(combine="sum"), HALF, False),
        "kmeans-half-normalized": (KMeansConfig(normalize=True), HALF, False),
        "l1-half": ("l1", HALF, True),
        "kmeans-elbow": (KMeansConfig(clusters="elbow"), None, True),
        "kmeans-silhouette": (KMeansConfig(clusters="silhouette"), None, True),
        f"kmeans-mac{target:.2f}": (KMeansConfig(), equal, True),
        f"l1-mac{target:.2f}": ("l1", equal, True),
        f"scp-mac{target:.2f}": (SCPConfig(), equal, True),
    }


def filter_structure(model: nn.Module, fractions: tuple[float, ...] = (0.25, 0.5, 0.75)) -> list[dict]:
    """Per conv layer of the base: the share of the filters' total sum of squares that k-means with K = N/4, N/2,
    3N/4 leaves (a fall in step with K - 0.75, 0.5, 0.25 - means no cluster structure) and the mean silhouette of
    those clusterings (near 0: no structure; near 1: tight, separated groups)."""
    rows = []
    for layer, conv in enumerate(m for m in model.modules() if isinstance(m, nn.Conv2d)):
        points = filter_points(conv.weight, normalize=False)
        total = spread(points)
        row = {"layer": layer, "filters": len(points)}
        for fraction in fractions:
            clustering = fit(points, max(2, round(fraction * len(points))), restarts=4, seed=0)
            row[f"inertia_share_{fraction}"] = float(clustering.inertia_) / total
            row[f"silhouette_{fraction}"] = float(silhouette_score(points, clustering.labels_))
        rows.append(row)
    return rows


def main() -> None:
    parser = arguments(__doc__, work="runs/bench-kmeans", out="benchmarks/results/kmeans_quick")
    parser.add_argument("--target", type=float, default=0.5, help="MAC reduction of the equal-cost comparison")
    args = parser.parse_args()
    bench = Bench.from_arguments(args)
    bench.payload["filter_structure"] = filter_structure(bench.base)
    save = lambda: bench.save(f"K-means filter clustering: {base_title(bench.payload)}", tables(bench.payload), NOTES)
    chosen = settings(args.target)
    for name, (method, budget, _) in chosen.items():
        bench.measure(name, method, budget)
        save()
    for name, (method, budget, finetune) in chosen.items():
        if finetune:
            bench.finetune(name, method, budget)
            save()


NOTES = """
Settings: `kmeans-blog` = K = half the filters of every conv layer, a random member of each cluster kept, no weight
combination (the blog); `half-centroid` keeps the member nearest the centroid; `-sum` also adds the removed members'
next-layer weights to the kept one's; `-normalized` clusters unit-length filters; `l1-half` = L1-norm at exactly the
same per-layer channel counts; `elbow` / `silhouette` choose K per layer (never below a quarter of the filters);
`*-mac` = k-means (centroid), L1 and SCP (cosine, least-squares combination) at the same MAC target. k-means: 4
k-means++ restarts, seed 0. `BN re-measured`: BatchNorm statistics re-measured on 1,024 held-out training images, no
weights changed. `fine-tuned`: one identical short fine-tune (recipe in the JSON) from the pruned model.
"""


def tables(payload: dict) -> str:
    cells = payload["cells"]
    if not cells:
        return "(no cells yet)\n"
    rows = [{"setting": name, "K rule": c["options"].get("clusters", "-") if c["method"] == "kmeans" else "-",
             "kept filter": c["options"].get("keep", "-"), "combine": c["options"].get("combine", "-"),
             "MACs removed": percent(c["mac_reduction"]), "params removed": percent(c["param_reduction"]),
             "pruned": percent(c["top1_pruned"]), "BN re-measured": percent(c["top1_recalibrated"]),
             "fine-tuned": percent(c.get("top1_finetuned")), "prune time (s)": c["prune_seconds"]}
            for name, c in cells.items()]
    layers = [{"setting": name, **{str(i): channels for i, channels in enumerate(c["channels"])}}
              for name, c in cells.items() if name in ("kmeans-blog", "kmeans-elbow", "kmeans-silhouette")]
    structure = [{"layer": r["layer"], "filters": r["filters"],
                  **{f"inertia share, K = {f}N": f"{r[f'inertia_share_{f}']:.2f}" for f in (0.25, 0.5, 0.75)},
                  **{f"silhouette, K = {f}N": f"{r[f'silhouette_{f}']:.3f}" for f in (0.25, 0.5, 0.75)}}
                 for r in payload.get("filter_structure", [])]
    return (markdown_table(rows, list(rows[0])) + "\nChannels kept per conv layer:\n\n"
            + (markdown_table(layers, list(layers[0])) if layers else "(not yet measured)\n")
            + "\nDo the base's filters form clusters? (k-means on each layer's filters, 4 restarts, seed 0)\n\n"
            + (markdown_table(structure, list(structure[0])) if structure else "(not yet measured)\n"))


if __name__ == "__main__":
    main()
