"""SCP against L1 at equal MACs on real CIFAR-10: every similarity criterion with and without weight combination,
the paper's setting, top-1 right after pruning, after re-measuring BatchNorm on the same evaluation images (the
trick SCP uses internally, given to every method so the comparison is fair), and after one identical short fine-tune.

    python benchmarks/scp_vs_l1.py --base runs/quick/checkpoint.pt --out benchmarks/results/scp_quick

Cells already in <out>.json are kept (an interrupted run resumes); fine-tuned checkpoints go under --work.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from torch import nn

from pipeline import data as cifar
from pipeline.checkpoint import load_checkpoint, model_from_checkpoint
from pipeline.export import file_sha256
from pipeline.flow import evaluation_images
from pipeline.prune import Budget, SCPConfig, method_name, prune, prune_checkpoint
from pipeline.prune.similarity import CRITERIA
from pipeline.report import markdown_table, write_results
from pipeline.train import CHECKPOINT_NAME, evaluate, make_config, train


def recalibrated(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """A copy of `model` whose BatchNorm statistics are re-measured on `images` (uint8), nothing else changed."""
    copy = model_from_checkpoint({"arch": model.spec.to_dict(), "state_dict": model.state_dict()})
    for module in copy.modules():
        if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
            module.reset_running_stats()
            module.momentum = None  # a plain average over all batches
    copy.train()
    with torch.no_grad():
        for batch in cifar.normalize(images).split(batch_size):
            copy(batch)
    return copy.eval()


def methods() -> dict[str, object]:
    cells: dict[str, object] = {"l1": "l1"}
    for criterion in CRITERIA:
        for combine in ("lstsq", "sum", "none"):
            cells[f"scp-{criterion}-{combine}"] = SCPConfig(criterion=criterion, combine=combine)
        cells[f"scp-{criterion}-paper"] = SCPConfig(criterion=criterion, combine="sum", rank="similarity",
                                                    recalibrate=False)
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="runs/quick/checkpoint.pt")
    parser.add_argument("--targets", default="0.3,0.5", help="MAC reductions")
    parser.add_argument("--finetune-preset", default="quick")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--work", default="runs/bench-scp", help="fine-tuned checkpoints")
    parser.add_argument("--out", default="benchmarks/results/scp_quick")
    args = parser.parse_args()

    base_checkpoint = load_checkpoint(args.base)
    data = cifar.load_cifar10(args.data_dir, holdout=base_checkpoint["data"]["holdout_images"])
    base = model_from_checkpoint(base_checkpoint)
    finetune_config = make_config(args.finetune_preset, finetune=True)
    out = Path(args.out)
    done = json.loads(out.with_suffix(".json").read_text())["cells"] if out.with_suffix(".json").exists() else {}
    payload = {"base": {"checkpoint": args.base, "sha256": file_sha256(Path(args.base)),
                        "width": base_checkpoint["recipe"]["width"], "epochs": base_checkpoint["epoch"],
                        "test_top1": evaluate(base, data.test)["top1"]},
               "finetune": dataclasses.asdict(finetune_config), "cells": done}

    def save() -> None:
        write_results(out, payload, title=title(payload), table=table(payload), notes=NOTES)

    for target in (float(t) for t in args.targets.split(",")):
        budget = Budget(mac_reduction=target)
        for name, method in methods().items():
            key = f"{target:.2f}/{name}"
            if key in done:
                continue
            images = evaluation_images(method, data.holdout)
            started = time.perf_counter()
            pruned, report = prune(base, method, budget, evaluation=images)
            seconds = time.perf_counter() - started
            calibration = data.holdout.head(SCPConfig().eval_images).images
            done[key] = {"target": target, "method": method_name(method), "options": report["options"],
                         "mac_reduction": report["mac_reduction"], "params": report["params_after"],
                         "prune_seconds": round(seconds, 2), "top1_pruned": evaluate(pruned, data.test)["top1"],
                         "top1_recalibrated": evaluate(recalibrated(pruned, calibration), data.test)["top1"]}
            print(key, {k: v for k, v in done[key].items() if k.startswith("top1")}, flush=True)
            save()
        # One identical fine-tune for L1, the best SCP with weight combination, and the same SCP without it.
        scp = {k: v for k, v in done.items() if v["target"] == target and v["method"] == "scp"}
        best = max((k for k in scp if not k.endswith(("-none", "-paper"))), key=lambda k: scp[k]["top1_pruned"])
        for key in (f"{target:.2f}/l1", best, best.rsplit("-", 1)[0] + "-none"):
            if "top1_finetuned" in done[key]:
                continue
            method = methods()[key.split("/", 1)[1]]
            pruned = prune_checkpoint(base_checkpoint, method, budget, evaluation=evaluation_images(method,
                                                                                                    data.holdout))
            folder = Path(args.work) / key.replace("/", "-")
            started = time.perf_counter()
            train(finetune_config, data, folder, resume=True, progress=False, init=pruned)
            done[key]["top1_finetuned"] = evaluate(model_from_checkpoint(load_checkpoint(folder / CHECKPOINT_NAME)),
                                                   data.test)["top1"]
            done[key]["finetune_seconds"] = round(time.perf_counter() - started, 1)
            print(key, "fine-tuned", done[key]["top1_finetuned"], flush=True)
            save()
    save()


NOTES = """
`pruned`: test top-1 right after pruning, no training. `BN re-measured`: the same pruned model with every BatchNorm's
running mean/variance re-measured on the 1,024 evaluation images (held-out training images) - no weights change; SCP
with `recalibrate` already does this layer by layer, L1 and the paper setting get it here. `fine-tuned`: one identical
short fine-tune (the recipe in the JSON) from the pruned model, for L1, the best SCP with weight combination and the
same criterion without it. SCP settings: `lstsq`/`sum`/`none` = weight combination with least-squares factor / factor
1 / no combination, all with pairs ranked by estimated pruning loss and BatchNorm re-measured layer by layer;
`paper` = factor 1, most similar pairs first, no re-measuring (the report's method). k = 3 nearest neighbours.
"""


def title(payload: dict) -> str:
    base = payload["base"]
    return (f"SCP vs L1 at equal MACs: VGG16-BN width {base['width']}, {base['epochs']} epochs, "
            f"test top-1 {100 * base['test_top1']:.2f}% (real CIFAR-10 test set, 10,000 images)")


def table(payload: dict) -> str:
    percent = lambda value: "" if value is None else f"{100 * value:.2f}%"
    rows = [{"MAC target": f"{100 * c['target']:.0f}%", "method": key.split("/", 1)[1],
             "MACs removed": percent(c["mac_reduction"]), "params": f"{c['params'] / 1e6:.3f}M",
             "pruned": percent(c["top1_pruned"]), "BN re-measured": percent(c["top1_recalibrated"]),
             "fine-tuned": percent(c.get("top1_finetuned")), "prune time (s)": c["prune_seconds"]}
            for key, c in payload["cells"].items()]
    return markdown_table(rows, list(rows[0])) if rows else "(no cells yet)\n"


if __name__ == "__main__":
    main()
