"""Every deployable format of the same models side by side: TorchScript Lite (.ptl, fp32), ONNX fp32 and int8, and
ExecuTorch with XNNPACK (.pte) fp32 and int8 - file size, top-1 on all 10,000 CIFAR-10 test images, and batch-1
latency on this host (median and p90, one thread, every model and format interleaved, in --processes separate
processes: each figure is the median over them, each ratio to the first model's same format with its min-max).

Each model is exported exactly as `invoke export --quantize int8` does (int8 calibrated on held-out training images of
its base, refused past --max-drop), then timed by the host benchmark.

    python benchmarks/deploy_formats.py \
        --models unpruned=runs/quick/checkpoint.pt,l1=runs/quick-l1/finetuned/checkpoint.pt

Run from the project root with the package installed (pip install -e .).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from prunedroid import data as cifar  # noqa: E402
from prunedroid.deploy.export import MAX_INT8_DROP, export_checkpoint  # noqa: E402
from prunedroid.experiment import ratio_spread  # noqa: E402
from prunedroid.measure.bench import benchmark  # noqa: E402
from prunedroid.measure.report import markdown_table, write_results  # noqa: E402
from prunedroid.training.checkpoint import Checkpoint  # noqa: E402

FORMATS = {"torchscript-lite": ".ptl fp32", "onnxruntime": ".onnx fp32", "onnxruntime-int8": ".onnx int8",
           "executorch": ".pte fp32 (XNNPACK)", "executorch-int8": ".pte int8 (XNNPACK)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="name=checkpoint pairs, comma-separated; the first is the "
                                                        "reference for ratios")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--work", default="runs/deploy-formats", help="where the exported files go")
    parser.add_argument("--out", default="benchmarks/results/deploy_quick", help="results stem (.json, .md, .png)")
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--max-drop", type=float, default=MAX_INT8_DROP)
    parser.add_argument("--runs", type=int, default=300, help="timed single-image runs per model and format")
    parser.add_argument("--processes", type=int, default=5, help="separate timing processes")
    args = parser.parse_args()
    models = dict(pair.split("=", 1) for pair in args.models.split(","))
    sidecars = []
    for name, checkpoint in models.items():
        held_out = Checkpoint.load(checkpoint).held_out_images
        data = cifar.load_cifar10(args.data_dir, holdout=held_out)
        sidecars.append(export_checkpoint(checkpoint, data.test, Path(args.work), name,
                                          calibration=data.holdout.head(args.calibration_images),
                                          max_drop=args.max_drop).sidecar)
        print(f"exported {name}", flush=True)
    result = benchmark(sidecars, data.test, threads=1, runs=args.runs, processes=args.processes)
    rows = [{**row, "format": FORMATS[row["runtime"]]} for row in result["rows"] if row["runtime"] in FORMATS]
    result.update(rows=rows, models=models, calibration_images=args.calibration_images, max_drop=args.max_drop)
    shown = [{"model": row["model"], "format": row["format"], "runtime": row["runtime"],
              "file": f"{row['file_bytes'] / 1e6:.2f} MB", "test top-1": f"{100 * row['test_top1']:.2f}%",
              "median ms": f"{row['latency_median_ms']:.3f}", "p90 ms": f"{row['latency_p90_ms']:.3f}",
              f"vs {rows[0]['model']} [min-max]": ratio_spread(row),
              "MACs": f"{row['macs'] / 1e6:.2f}M"} for row in rows]
    plot(rows, Path(args.out))
    write_results(args.out, result, title="Deployable formats: size, accuracy and host latency",
                  table=markdown_table(shown, list(shown[0])) + f"\n![size and latency vs accuracy]"
                                                                 f"({Path(args.out).name}.png)\n",
                  notes=f"Top-1 on all {result['test_images']:,} test images; latency batch 1, one thread, median "
                        f"and p90 of {args.runs} runs in {result['rounds']} interleaved rounds, each the median over "
                        f"{args.processes} separate processes; the ratio to the first model in the same format is the "
                        f"median over the processes [their min-max]; int8 calibrated on "
                        f"{args.calibration_images} held-out training images of each model's base.")


def plot(rows: list[dict], stem: Path) -> None:
    """Size vs top-1 and latency vs top-1, one marker per format, one colour per model."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    markers = dict(zip(FORMATS.values(), "osD^v"))
    colours = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(row["model"] for row in rows))}
    for row in rows:
        for axis, value in zip(axes, (row["file_bytes"] / 1e6, row["latency_median_ms"])):
            axis.scatter(value, 100 * row["test_top1"], marker=markers[row["format"]], color=colours[row["model"]],
                         label=f"{row['model']}, {row['format']}")
    axes[0].set(xlabel="file size (MB)", ylabel="test top-1 (%)", title="Size vs accuracy")
    axes[1].set(xlabel="batch-1 latency, median (ms, 1 thread)", ylabel="test top-1 (%)",
                title="Latency vs accuracy")
    axes[1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(stem.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
