"""Any CNN: every pruning method on torchvision's classification models and on small hand-written models that
concatenate, group, reuse a layer, normalise by groups and factorise kernels (1x7, 7x1) - models nobody tuned the
library for.

Each model is built at random initialisation (seed 0, ten classes; BatchNorm statistics measured on the calibration
images) and pruned to half its MACs with CIFAR-10 test
images upsampled to the input size as calibration data (what a method cuts does not need trained weights to be
checked; no accuracy is measured here). Per model and method the table gives:
- MACs reached, counted independently of the library by torch.utils.flop_counter.FlopCounterMode (its FLOPs / 2
  over convolutions and matrix products), against the 50% asked (the budget's tolerance is 1%);
- seconds to prune (this machine, 2 cores, shared);
- whether the cut is exact: the pruned model's logits against the full model's with, at every consumer's input, each
  removed channel replaced by what the method folded into its place (factor x its twin; nothing: zero) - the cut,
  the offsets behind concatenations and the folds all have to be right for the two to agree (relative_error);
- whether it exports: ONNX written by prunedroid.deploy.formats.write_onnx (checked by onnx's checker) and run by
  onnxruntime against PyTorch;
- or, for a model a method cannot prune to the budget, the one-line refusal.
A cell that raises anything else than a refusal is a defect and fails the script.

    .venv/bin/python benchmarks/any_cnn.py [--size 64] [--models resnet18,...] [--methods l1,...]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunedroid import data as cifar
from prunedroid.deploy.formats import run, write_onnx
from prunedroid.errors import PrunedroidError
from prunedroid.measure.report import markdown_table, write_results
from prunedroid.pruning import (
    KMeansConfig,
    L1Config,
    PruningMethod,
    SCPConfig,
    TorchPruningConfig,
    channel_graph,
    prune,
)
from prunedroid.pruning.groups import ChannelGraph
from prunedroid.training.train import measure_batchnorm

ROOT = Path(__file__).resolve().parents[1]
# Largest relative_error of a cut or an export that counts as exact: float32 rounding through 80 layers reaches
# 1e-4 here (EfficientNet-B0, k-means); a channel cut or folded in the wrong place is not rounding.
EXACT = 1e-3


class ConcatBlock(nn.Module):
    """Two branches concatenated and read by one conv: the second branch's channels sit at an offset."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.left = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.merge = nn.Sequential(nn.Conv2d(12, 10, 3, padding=1), nn.BatchNorm2d(10), nn.ReLU())
        self.head = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(self.merge(torch.cat([self.left(x), self.right(x)], 1)).mean((2, 3)))


class GroupedBlock(nn.Module):
    """A ResNeXt-style grouped 3x3 conv (groups=4) between two 1x1 convs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.reduce = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(32, 24, 1), nn.BatchNorm2d(24), nn.ReLU())
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.expand(self.grouped(self.reduce(self.stem(x)))).mean((2, 3)))


class ReusedConv(nn.Module):
    """One conv module called twice (weights shared across two applications)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.shared = nn.Conv2d(16, 16, 3, padding=1)
        self.out = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(self.shared(torch.relu(self.shared(x))))
        return self.head(self.out(x).mean((2, 3)))


class GroupNormNet(nn.Module):
    """Convs normalised by GroupNorm (4 groups) instead of BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(4, 32), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean((2, 3)))


class FactorisedConvs(nn.Module):
    """Inception-v3's factorised 1x7 and 7x1 convolutions, one with a (2, 1) stride."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.wide = nn.Sequential(nn.Conv2d(16, 24, (1, 7), padding=(0, 3)), nn.BatchNorm2d(24), nn.ReLU())
        self.tall = nn.Sequential(nn.Conv2d(24, 32, (7, 1), stride=(2, 1), padding=(3, 0)), nn.BatchNorm2d(32),
                                  nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tall(self.wide(self.stem(x))).mean((2, 3)))


def torchvision_model(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        extra = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
        return torchvision.models.get_model(name, weights=None, num_classes=10, **extra)
    return build


HAND_WRITTEN: dict[str, Callable[[], nn.Module]] = {"concat": ConcatBlock, "grouped": GroupedBlock,
                                                     "reused": ReusedConv, "groupnorm": GroupNormNet,
                                                     "factorised": FactorisedConvs}
TORCHVISION = ("resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x1_0",
               "densenet121", "squeezenet1_1", "googlenet", "regnet_x_400mf", "convnext_tiny")
MODELS: dict[str, Callable[[], nn.Module]] = {**HAND_WRITTEN, **{name: torchvision_model(name) for name in TORCHVISION}}


def methods(images: int) -> dict[str, PruningMethod]:
    """The methods compared, each with the options that make its cut checkable against the full model: SCP without
    BatchNorm re-measurement (which changes statistics, not the cut), k-means folding its clusters (sum)."""
    return {"l1": L1Config(), "kmeans": KMeansConfig(combine="sum", restarts=1),
            "scp": SCPConfig(recalibrate=False, eval_images=images, batch_size=images),
            "torch-pruning": TorchPruningConfig()}


def flop_macs(model: nn.Module, example: torch.Tensor) -> int:
    """MACs of one input counted by torch's FlopCounterMode (FLOPs / 2), independently of the library's count."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(example)
    return counter.get_total_flops() // 2


def substituted(model: nn.Module, graph: ChannelGraph, rows: list[dict]) -> nn.Module:
    """A copy of the full `model` that computes what the pruned one should: at every consumer's input, each channel
    a report row removed reads factor x its kept twin (the row's merges; zero where it has none)."""
    full = copy.deepcopy(model).eval()
    plans: dict[str, list[tuple[slice, int, list[tuple[int, int, float]]]]] = {}
    for group, row in zip(graph.groups, rows):
        merged = {merge[0]: (merge[1], float(merge[2]) if len(merge) > 2 else 1.0) for merge in row.get("merges", [])}
        removed = [(channel, *merged.get(channel, (channel, 0.0))) for channel in range(group.channels)
                   if channel not in set(row["kept"])]
        if removed:
            for consumer in group.consumers:
                plans.setdefault(consumer.module, []).append((consumer.channels(group.channels), consumer.repeat,
                                                             removed))

    def hook(name: str) -> Callable:
        def replace(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            x = inputs[0].clone()
            maps = x if x.dim() == 4 else x.view(x.shape[0], -1, plans[name][0][1])
            for channels, _, removed in plans[name]:
                own = maps[:, channels]
                original = own.clone()
                for channel, twin, factor in removed:
                    own[:, channel] = factor * original[:, twin]
            return (x, *inputs[1:])
        return replace

    for name in plans:
        full.get_submodule(name).register_forward_pre_hook(hook(name))
    return full


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| relative to how much `expected` (n, outputs) varies between inputs: a model whose logits
    do not depend on its input (vanishing activations) cannot pass a comparison by being constant."""
    spread = (expected - expected.mean(0)).abs().max().item()
    return (got - expected).abs().max().item() / spread if spread > 0 else float("inf")


def exact_error(model: nn.Module, pruned: nn.Module, graph: ChannelGraph, rows: list[dict],
                inputs: torch.Tensor) -> float:
    """relative_error of the pruned model's logits against the substituted full model's over `inputs`."""
    with torch.no_grad():
        return relative_error(pruned.eval()(inputs), substituted(model, graph, rows)(inputs))


def onnx_error(model: nn.Module, inputs: torch.Tensor) -> float:
    """relative_error of onnxruntime's logits for `model` exported by the product's ONNX writer against PyTorch's over
    `inputs`."""
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        path = Path(folder) / "model.onnx"
        write_onnx(model.eval(), path, dynamic_batch=True, example=inputs[:1])
        return relative_error(run(path, inputs), model(inputs))


def calibration_images(size: int, count: int, data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` held-out CIFAR-10 training images (never test images), normalised and upsampled to
    size x size, and their labels."""
    holdout = cifar.load_cifar10(data_dir, download=False).holdout
    batch = cifar.normalize(holdout.images[:count])
    return nn.functional.interpolate(batch, size=size, mode="bilinear", align_corners=False), holdout.labels[:count]


def run_cell(model: nn.Module, method: PruningMethod, images: torch.Tensor, labels: torch.Tensor,
             target: float) -> dict:
    """One model x method: what it reached, how long it took, whether the cut is exact and exports, or why not."""
    example = images[:1]
    start = time.perf_counter()
    try:
        result = prune(model, example, method, mac_reduction=target, calibration=[(images, labels)])
    except PrunedroidError as err:
        return {"refused": str(err), "seconds": round(time.perf_counter() - start, 1)}
    seconds = time.perf_counter() - start
    graph = channel_graph(model, example)
    reached = 1 - flop_macs(result.model, example) / flop_macs(model, example)
    with torch.no_grad():
        same_shape = tuple(result.model.eval()(images).shape) == tuple(model.eval()(images).shape)
    return {"seconds": round(seconds, 1), "reached": reached, "reported": result.report["mac_reduction"],
            "same_shape": same_shape, "exact_error": exact_error(model, result.model, graph, result.report["layers"],
                                                                 images),
            "onnx_error": onnx_error(result.model, images[:4]), "groups": len(graph.groups),
            "left_whole": sum(len(whole.producers) for whole in graph.left_whole)}


def cell_text(cell: dict, target: float) -> str:
    if "refused" in cell:
        return f"refused: {cell['refused']}"
    ok = abs(cell["reached"] - target) <= 0.01 and cell["same_shape"]
    return (f"{cell['reached']:.1%}{'' if ok else ' MISSED'}, {cell['seconds']:.0f} s, "
            f"cut {'exact' if cell['exact_error'] <= EXACT else 'WRONG'} ({cell['exact_error']:.0e}), "
            f"onnx {'ok' if cell['onnx_error'] <= EXACT else 'WRONG'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="input height and width in pixels")
    parser.add_argument("--images", type=int, default=16, help="calibration images (CIFAR-10 test images)")
    parser.add_argument("--target", type=float, default=0.5, help="fraction of MACs to remove")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated models")
    parser.add_argument("--methods", default="l1,kmeans,scp,torch-pruning", help="comma-separated methods")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "cifar-10-batches-py")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "any_cnn")
    args = parser.parse_args()
    images, labels = calibration_images(args.size, args.images, args.data_dir)
    chosen = methods(args.images)
    previous = json.loads(args.out.with_suffix(".json").read_text()) if args.out.with_suffix(".json").exists() else {}
    settings = {"size": args.size, "images": args.images, "target": args.target}
    cells = previous.get("cells", {}) if previous.get("settings") == settings else {}
    for name in args.models.split(","):
        for method in args.methods.split(","):
            key = f"{name} {method}"
            if key in cells:  # resumed: a finished cell is not run again
                continue
            torch.manual_seed(0)
            # BatchNorm statistics of the images keep activations at their scale through random weights, as
            # through trained ones (torchvision's GoogLeNet initialisation otherwise gives one output for all).
            model = measure_batchnorm(MODELS[name](), [images])
            cells[key] = run_cell(model, chosen[method], images, labels, args.target)
            print(key, cell_text(cells[key], args.target), flush=True)
            write_results(args.out, {"settings": settings, "cells": cells}, TITLE, table(cells, args.target),
                          NOTES)
    write_results(args.out, {"settings": settings, "cells": cells}, TITLE, table(cells, args.target), NOTES)
    defects = [key for key, cell in cells.items() if "refused" not in cell and "MISSED" in cell_text(cell, args.target)
               or "refused" not in cell and cell["exact_error"] > EXACT]
    sys.exit(1 if defects else 0)


TITLE = ("Any CNN: every method on torchvision's models and hand-written concat/grouped/reused/GroupNorm/factorised "
         "models")
NOTES = """Random initialisation, ten classes, BatchNorm statistics of the calibration images, half the MACs asked.
Reached: MACs removed as FlopCounterMode counts them. Cut: max |pruned - full model with each removed channel replaced
by its fold| over the calibration images, divided by the largest deviation of the full model's logits from their mean
over those images (exact: <= 1e-3; a model whose logits ignore the input cannot pass). ONNX: the pruned model in
onnxruntime against PyTorch, same measure. Refused: the library's
one-line error. Made by benchmarks/any_cnn.py; see its docstring."""


def table(cells: dict, target: float) -> str:
    names = sorted({key.split(" ")[0] for key in cells}, key=lambda name: list(MODELS).index(name))
    chosen = list(dict.fromkeys(key.split(" ")[1] for key in cells))
    rows = []
    for name in names:
        row = {"model": name}
        for method in chosen:
            cell = cells.get(f"{name} {method}")
            row[method] = "" if cell is None else cell_text(cell, target).replace("|", "/")
        rows.append(row)
    return markdown_table(rows, ["model", *chosen])


if __name__ == "__main__":
    main()
