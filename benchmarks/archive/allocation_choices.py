"""Global allocation's design choices, measured: how each layer's channel scores are normalised before they are
ranked across layers (by their mean, their maximum, or not at all) and whether a step of channels is ranked by its
score alone or by its score per MAC it saves. For L1 and SCP at each MAC target: the channels each variant keeps
and top-1 with BatchNorm re-measured (no fine-tune), on held-out training images no method analysed (the choice
is made on those, never on test images), beside uniform and sensitivity allocation.

    python benchmarks/archive/allocation_choices.py --base runs/quick/checkpoint.pt \\
        --out benchmarks/archive/results/allocation_quick
"""
from __future__ import annotations

from pathlib import Path

import torch

from prunedroid import data as cifar
from prunedroid.experiment import arguments, base_title
from prunedroid.flow import evaluation_set
from prunedroid.measure.report import command_line, markdown_table, write_results
from prunedroid.pruned import BATCHNORM_IMAGES, SCORED_IMAGES, calibration, example_input, prune_model
from prunedroid.pruning import Budget, SCPConfig, channel_graph, channel_scores, cut
from prunedroid.pruning.allocation import global_counts
from prunedroid.training.checkpoint import Checkpoint
from prunedroid.training.train import evaluate, remeasure_batchnorm

METHODS = {"l1": "l1", "scp-cosine": SCPConfig()}
VARIANTS = [(normalization, per_mac) for normalization in ("mean", "max", "none") for per_mac in (False, True)]


def main() -> None:
    parser = arguments(__doc__, out="benchmarks/archive/results/allocation_quick")
    parser.add_argument("--targets", default="0.5,0.7")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"of {', '.join(METHODS)}")
    parser.add_argument("--cache", default="runs/bench-allocation/sensitivity.json",
                        help="sensitivity curves of this base, kept for the next run and target")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = Checkpoint.load(args.base)
    base = checkpoint.model()
    data = cifar.load_cifar10(args.data_dir, holdout=checkpoint.held_out_images)
    # The images sensitivity scores on: past SCP's evaluation set and the BatchNorm images.
    bn_images = data.holdout.images[:BATCHNORM_IMAGES]
    scored = cifar.Split(data.holdout.images[BATCHNORM_IMAGES:BATCHNORM_IMAGES + SCORED_IMAGES],
                         data.holdout.labels[BATCHNORM_IMAGES:BATCHNORM_IMAGES + SCORED_IMAGES])
    top1 = lambda model: evaluate(remeasure_batchnorm(model, bn_images), scored)["top1"]
    rows = []
    for name in args.methods.split(","):
        method = METHODS[name]
        evaluation = evaluation_set(method, data.holdout)
        graph, example = channel_graph(base, example_input()), example_input()
        scores = channel_scores(base, graph, example, method, 0, calibration(evaluation))
        for target in (float(t) for t in args.targets.split(",")):
            for allocation in ("uniform", "sensitivity"):
                pruned, report = prune_model(base, method, Budget.of(mac_reduction=target, allocation=allocation), 0,
                                             evaluation, data.holdout, Path(args.cache))
                rows.append({"method": name, "MAC target": f"{target:.0%}", "allocation": allocation,
                             "MACs removed": f"{report['mac_reduction']:.1%}",
                             "channels": "/".join(map(str, pruned.spec.conv_channels)),
                             "held-out top-1 (BN re-measured)": f"{100 * top1(pruned):.2f}%"})
                print(rows[-1], flush=True)
            for normalization, per_mac in VARIANTS:
                budget = Budget.of(mac_reduction=target, allocation="global")
                counts = global_counts(graph, budget, scores, normalization, per_mac)
                pruned, _ = cut(base, graph, example, method, Budget.of(layer_channels=tuple(counts)), 0,
                                calibration(evaluation))
                rows.append({"method": name, "MAC target": f"{target:.0%}",
                             "allocation": f"global, {normalization}" + (", per MAC" if per_mac else ""),
                             "MACs removed": f"{graph.mac_reduction(counts):.1%}",
                             "channels": "/".join(map(str, counts)),
                             "held-out top-1 (BN re-measured)": f"{100 * top1(pruned):.2f}%"})
                print(rows[-1], flush=True)
    payload = {"command": command_line(), "base": {"checkpoint": args.base, "title": base_title({"base": {
        "width": checkpoint.recipe["width"], "epochs": checkpoint.epoch,
        "test_top1": checkpoint.metrics["test"]["top1"]}})}, "rows": rows}
    write_results(args.out, payload, title=f"Global allocation's choices: {payload['base']['title']}",
                  table=markdown_table(rows, list(rows[0])), notes=NOTES)


NOTES = f"""
Held-out top-1: BatchNorm re-measured on the first {BATCHNORM_IMAGES} held-out training images, top-1 on the next
{SCORED_IMAGES} (the images sensitivity allocation measures on; no test image is used to choose). Global allocation
ships with the best of its variants here as its default (prunedroid/pruning/allocation.py, global_counts).
"""


if __name__ == "__main__":
    main()
