"""Does distilling from the unpruned base recover more in the same short fine-tune? L1 and SCP at one MAC target,
each fine-tuned with the preset's recipe twice - plain cross-entropy, and with --distill-weight from the base - and
the two compared on the same test images (paired difference with a 95% bootstrap interval).

    python benchmarks/archive/distill.py --base runs/quick/checkpoint.pt --out benchmarks/archive/results/distill_quick

Fine-tunes go under --work and resume there.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from prunedroid import data as cifar
from prunedroid.flow import evaluation_set
from prunedroid.measure.bench import paired_difference
from prunedroid.measure.report import markdown_table, write_results
from prunedroid.pruned import prune_checkpoint
from prunedroid.pruning import Budget, SCPConfig, method_name
from prunedroid.training.checkpoint import Checkpoint
from prunedroid.training.train import evaluate, make_config, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="runs/quick/checkpoint.pt")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="benchmarks/archive/results/distill_quick")
    parser.add_argument("--work", default="runs/bench-distill")
    parser.add_argument("--target", type=float, default=0.5, help="MAC reduction")
    parser.add_argument("--distill-weight", default="0.5")
    parser.add_argument("--distill-temperature", default="4")
    parser.add_argument("--finetune-preset", default="quick")
    args = parser.parse_args()
    base = Checkpoint.load(args.base)
    data = cifar.load_cifar10(args.data_dir, holdout=base.held_out_images)
    recipes = {"plain": {}, "distilled": {"distill_weight": args.distill_weight,
                                          "distill_temperature": args.distill_temperature}}
    rows, payload = [], {"base": args.base, "target": args.target, "cells": {}, "paired": {}}
    for method in ("l1", SCPConfig()):
        pruned = prune_checkpoint(base, method, Budget.of(mac_reduction=args.target), 0,
                                  evaluation_set(method, data.holdout))
        correct = {}
        for recipe, overrides in recipes.items():
            config = make_config(args.finetune_preset, {"width": base.recipe["width"], **overrides}, finetune=True)
            folder = Path(args.work) / f"{method_name(method)}-{recipe}"
            finetuned = train(config, data, folder, resume=True, progress=False, init=pruned,
                              teacher=args.base if config.distill_weight else None)
            scored = evaluate(finetuned.model(), data.test, per_image=True)
            correct[recipe] = scored["correct"]
            key = f"{method_name(method)}/{recipe}"
            payload["cells"][key] = {"top1": scored["top1"], "recipe": {k: finetuned.recipe[k] for k in (
                "epochs", "lr", "distill_weight", "distill_temperature")},
                "seconds": round(sum(epoch["seconds"] for epoch in finetuned.history), 1)}
            rows.append({"method": method_name(method), "fine-tune": recipe,
                         "test top-1": f"{100 * scored['top1']:.2f}%", "epochs": finetuned.recipe["epochs"],
                         "distill weight": config.distill_weight, "seconds": payload["cells"][key]["seconds"]})
        gap = paired_difference(correct["distilled"][None], correct["plain"][None])
        payload["paired"][f"{method_name(method)}: distilled vs plain"] = gap
        interval = f"{100 * gap['difference']:+.2f} [{100 * gap['low']:+.2f}, {100 * gap['high']:+.2f}]"
        rows.append({"method": method_name(method), "fine-tune": "distilled minus plain", "test top-1": interval})
    write_results(args.out, payload, title=f"Distillation from the base in the short fine-tune ({args.base}, "
                                           f"{100 * args.target:.0f}% fewer MACs)",
                  table=markdown_table(rows, list(rows[0])),
                  notes="Test top-1 on the 10,000 CIFAR-10 test images; the paired row is distilled minus plain on the "
                        "same images with a 95% bootstrap interval (one fine-tune seed each).")


if __name__ == "__main__":
    main()
