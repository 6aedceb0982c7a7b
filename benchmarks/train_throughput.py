"""Training throughput: prunedroid's batched uint8 data path + channels-last step against a plain reference loop
(per-image transforms in a DataLoader, as torchvision-style recipes do), same model, batch size and optimiser,
measured side by side in one run on real CIFAR-10.

    python benchmarks/train_throughput.py --width 0.25 --batch-size 256 --steps 30
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from prunedroid import data as cifar
from prunedroid.measure.report import markdown_table, write_results
from prunedroid.models import build_model, vgg16_spec


class PerImageCifar(torch.utils.data.Dataset):
    """The reference: every image padded, cropped, flipped and normalised on its own, as
    RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize do."""

    def __init__(self, split: cifar.Split) -> None:
        self.images = split.images.permute(0, 2, 3, 1).numpy()  # HWC uint8, as PIL-based datasets hold them
        self.labels = split.labels
        self.mean = np.array(cifar.MEAN, dtype=np.float32)
        self.std = np.array(cifar.STD, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        padded = np.pad(self.images[index], ((4, 4), (4, 4), (0, 0)))
        dy, dx = np.random.randint(0, 9, size=2)
        crop = padded[dy:dy + 32, dx:dx + 32]
        if np.random.rand() < 0.5:
            crop = crop[:, ::-1]
        image = (crop.astype(np.float32) / 255 - self.mean) / self.std
        return torch.from_numpy(image.transpose(2, 0, 1).copy()), self.labels[index]


def timed_steps(batches: Iterable, steps: int, warmup: int, step_fn) -> list[float]:
    """Seconds per step (data fetch included) for `steps` steps after `warmup` untimed ones."""
    times, iterator = [], iter(batches)
    for index in range(warmup + steps):
        started = time.perf_counter()
        images, labels = next(iterator)
        step_fn(images, labels)
        if index >= warmup:
            times.append(time.perf_counter() - started)
    return times


def endless(make: callable) -> Iterator:
    while True:
        yield from make()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference loop")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/train_throughput")
    args = parser.parse_args()

    train = cifar.load_cifar10(args.data_dir, holdout=0).train
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    initial = build_model(vgg16_spec(args.width)).state_dict()

    def make_step(channels_last: bool):
        model = build_model(vgg16_spec(args.width))
        model.load_state_dict(initial)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

        def step(images: torch.Tensor, labels: torch.Tensor) -> None:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    generator = torch.Generator().manual_seed(args.seed)
    loops = {
        "reference: per-image DataLoader, NCHW": (
            lambda: endless(lambda: torch.utils.data.DataLoader(PerImageCifar(train), batch_size=args.batch_size,
                                                                 shuffle=True, num_workers=args.workers,
                                                                 drop_last=True, persistent_workers=False)),
            False),
        **{f"prunedroid: batched uint8 augment, {'channels-last' if channels_last else 'NCHW'}": (
            lambda channels_last=channels_last: endless(lambda: cifar.batches(
                train, args.batch_size, generator=generator, train=True, channels_last=channels_last)),
            channels_last) for channels_last in (False, True)},
    }
    rows = []
    for name, (make_batches, channels_last) in loops.items():
        data_only = timed_steps(make_batches(), args.steps, args.warmup, lambda x, y: None)
        full = timed_steps(make_batches(), args.steps, args.warmup, make_step(channels_last))
        rows.append({"loop": name, "data_images_per_s": round(args.batch_size / statistics.median(data_only)),
                     "train_images_per_s": round(args.batch_size / statistics.median(full)),
                     "median_step_ms": round(1000 * statistics.median(full), 1)})
        print(rows[-1], flush=True)
    reference, ours = rows[0], rows[-1]
    speedup = ours["train_images_per_s"] / reference["train_images_per_s"]
    for row in rows:
        row["train_speedup"] = f"{row['train_images_per_s'] / reference['train_images_per_s']:.2f}x"
    write_results(args.out, {"width": args.width, "batch_size": args.batch_size, "steps": args.steps,
                             "warmup": args.warmup, "reference_workers": args.workers, "seed": args.seed,
                             "rows": rows, "train_speedup": speedup},
                  title=f"Training throughput, VGG16-BN width {args.width}, batch {args.batch_size}, real CIFAR-10",
                  table=markdown_table(rows, ["loop", "train_images_per_s", "train_speedup", "median_step_ms",
                                              "data_images_per_s"]),
                  notes=f"Median over {args.steps} timed steps after {args.warmup} warm-up steps; a step includes "
                        f"fetching its batch. data_images_per_s: the input pipeline alone, no model. The reference "
                        f"uses {args.workers} DataLoader worker processes.")
    print(f"prunedroid step is {speedup:.2f}x the reference")


if __name__ == "__main__":
    main()
