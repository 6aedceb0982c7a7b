"""How long a pruning method takes, and its peak memory, on full-width VGG16-BN. Each setting runs in a fresh
process so its peak memory is its own. A setting is a method and its options: `scp:criterion=cosine`,
`kmeans:clusters=elbow`, `l1`; methods that need a budget get --mac-reduction.

    python benchmarks/prune_speed.py --out benchmarks/results/scp_speed \
        --settings scp:criterion=cosine,scp:criterion=euclidean,scp:criterion=manhattan,scp:criterion=chebyshev
    python benchmarks/prune_speed.py --out benchmarks/results/kmeans_speed \
        --settings kmeans:clusters=budget,kmeans:clusters=elbow,kmeans:clusters=silhouette

Targets: SCP (cosine, 1,024 evaluation images) and k-means (automatic K, all 13 conv layers) in 60 s or less on 2
CPU cores; SCP's peak memory under 4 GiB.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def measure(base: str, setting: str, target: float, eval_images: int, data_dir: str | None) -> dict:
    """Runs in the child: load, prune once, report seconds and peak resident memory (bytes)."""
    from prunedroid import data as cifar
    from prunedroid.flow import evaluation_set
    from prunedroid.pruned import prune_model
    from prunedroid.pruning import Budget, resolve_method
    from prunedroid.training.checkpoint import Checkpoint

    name, _, options = setting.partition(":")
    given = dict(option.split("=", 1) for option in options.split("+") if option)
    if name == "scp":
        given.setdefault("eval_images", str(eval_images))
    method, budget = resolve_method(name, given, None, default_budget=Budget.of(mac_reduction=target))
    checkpoint = Checkpoint.load(base)
    holdout = cifar.load_cifar10(data_dir, holdout=checkpoint.held_out_images).holdout
    evaluation = evaluation_set(method, holdout)
    model = checkpoint.model().eval()
    resident_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    _, report = prune_model(model, method, budget, evaluation=evaluation)
    seconds = time.perf_counter() - started
    return {"setting": setting, "seconds": round(seconds, 2), "mac_reduction": report["mac_reduction"],
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_before_pruning_bytes": resident_before, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="runs/paper/checkpoint.pt")
    parser.add_argument("--settings", default="scp:criterion=cosine",
                        help="comma-separated method:option=value+option=value settings")
    parser.add_argument("--mac-reduction", type=float, default=0.5)
    parser.add_argument("--eval-images", type=int, default=1024, help="SCP's evaluation images")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="benchmarks/results/scp_speed")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.base, args.child, args.mac_reduction, args.eval_images, args.data_dir)))
        return

    from prunedroid.measure.report import markdown_table, write_results
    from prunedroid.training.checkpoint import Checkpoint

    recipe = Checkpoint.load(args.base).recipe
    rows = []
    for setting in args.settings.split(","):
        command = [sys.executable, __file__, "--base", args.base, "--child", setting, "--mac-reduction",
                   str(args.mac_reduction), "--eval-images", str(args.eval_images)]
        if args.data_dir:
            command += ["--data-dir", args.data_dir]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    table = markdown_table([{"setting": r["setting"], "time (s)": r["seconds"],
                             "peak memory (GiB)": f"{r['peak_rss_bytes'] / 2**30:.2f}",
                             "memory before pruning (GiB)": f"{r['rss_before_pruning_bytes'] / 2**30:.2f}",
                             "MACs removed": f"{100 * r['mac_reduction']:.1f}%", "torch threads": r["threads"]}
                            for r in rows], ["setting", "time (s)", "peak memory (GiB)",
                                             "memory before pruning (GiB)", "MACs removed", "torch threads"])
    write_results(args.out, {"base": args.base, "width": recipe["width"], "eval_images": args.eval_images,
                             "mac_reduction": args.mac_reduction, "rows": rows},
                  title=f"Pruning speed: VGG16-BN width {recipe['width']}, {args.eval_images} evaluation images "
                        f"(SCP), {100 * args.mac_reduction:.0f}% MAC target where a budget applies",
                  table=table, notes=SPEED_NOTES)


SPEED_NOTES = """Time: the whole prune() call - for SCP feature maps layer by layer, similarity, KNN pairs, pruning
losses, weight combination, BatchNorm re-measuring and surgery; for k-means the K search (automatic K), the final
clusterings and surgery - other options at their defaults. Peak memory: the process's peak resident set, including
the CIFAR-10 arrays and the model loaded before pruning (second column)."""


if __name__ == "__main__":
    main()
