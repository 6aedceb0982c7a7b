"""Re-measuring BatchNorm statistics after pruning: on held-out images as they are, or on one seeded random crop and
flip of each (what training normalised with), against keeping the trained statistics. Real CIFAR-10, test top-1.

    python benchmarks/archive/bn_calibration.py --base runs/quick/checkpoint.pt \\
        --out benchmarks/archive/results/bn_calibration

Target 0 is the unpruned base: there re-measuring should change nothing, so any loss is the measurement's own.
Run from the project root with the package installed (pip install -e .).
"""
from __future__ import annotations

import statistics

import torch

from prunedroid import data as cifar
from prunedroid.experiment import arguments, percent
from prunedroid.files import file_sha256
from prunedroid.flow import evaluation_set
from prunedroid.measure.report import markdown_table, write_results
from prunedroid.pruned import prune_model
from prunedroid.pruning import Budget, SCPConfig
from prunedroid.training.checkpoint import Checkpoint
from prunedroid.training.train import evaluate, remeasure_batchnorm

METHODS = {"l1": "l1", "scp-cosine": SCPConfig()}


def main() -> None:
    parser = arguments(__doc__, out="benchmarks/archive/results/bn_calibration")
    parser.add_argument("--targets", default="0,0.3,0.5,0.7", help="MAC reductions (0: unpruned)")
    parser.add_argument("--images", default="1024,4096", help="held-out images the statistics are measured on")
    parser.add_argument("--seeds", default="0,1,2", help="augmentation draws")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = Checkpoint.load(args.base)
    data = cifar.load_cifar10(args.data_dir, holdout=checkpoint.held_out_images)
    base = checkpoint.model()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    top1 = lambda model: evaluate(model, data.test)["top1"]
    rows = []
    for target in (float(t) for t in args.targets.split(",")):
        for name, method in METHODS.items() if target else [("none", None)]:
            model = base if method is None else prune_model(base, method, Budget.of(mac_reduction=target),
                                                      evaluation=evaluation_set(method, data.holdout))[0]
            row = {"target": target, "method": name, "trained": top1(model)}
            for count in (int(c) for c in args.images.split(",")):
                images = data.holdout.head(count).images
                augmented = [top1(remeasure_batchnorm(model, images, augment_seed=seed)) for seed in seeds]
                row[f"as_is_{count}"] = top1(remeasure_batchnorm(model, images))
                row[f"augmented_{count}"] = augmented
            rows.append(row)
            print(row, flush=True)
    width, epochs = checkpoint.recipe["width"], checkpoint.epoch
    payload = {"base": {"checkpoint": args.base, "sha256": file_sha256(args.base), "width": width, "epochs": epochs},
               "seeds": seeds, "rows": rows}
    write_results(args.out, payload, title=f"BatchNorm re-measured after pruning: VGG16-BN width {width}, {epochs} "
                  f"epochs ({args.base})", table=table(rows), notes=NOTES)


def table(rows: list[dict]) -> str:
    counts = [key.split("_")[-1] for key in rows[0] if key.startswith("as_is_")]
    spread = lambda values: (f"{percent(statistics.mean(values))} ({percent(min(values))}-"
                             f"{percent(max(values))})")
    lines = [{"MAC target": f"{100 * r['target']:.0f}%", "method": r["method"], "trained statistics": percent(
        r["trained"]), **{f"as they are, {c}": percent(r[f"as_is_{c}"]) for c in counts},
        **{f"augmented, {c}": spread(r[f"augmented_{c}"]) for c in counts}} for r in rows]
    return markdown_table(lines, list(lines[0]))


NOTES = """
Test top-1 on the 10,000 test images. `trained statistics`: the model as pruned (SCP re-measures the layers it
edits on its 1,024 evaluation images as they are; L1 keeps the trained ones). `as they are, n`: every BatchNorm
re-measured on the first n held-out training images. `augmented, n`: the same images, each randomly cropped (4-pixel
zero padding) and flipped once as in training: mean over the augmentation seeds (min-max).
"""


if __name__ == "__main__":
    main()
