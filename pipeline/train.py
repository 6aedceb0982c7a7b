"""Train and evaluate: SGD + warm-up/cosine or one-cycle, a checkpoint every epoch, exact resume."""
from __future__ import annotations

import dataclasses
import math
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline import data as cifar
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.cost import count_cost
from pipeline.errors import PipelineError
from pipeline.models import VGGSpec, build_model, vgg16_spec

CHECKPOINT_NAME = "checkpoint.pt"
SCHEDULES = ("cosine", "onecycle")


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe. Stored in every checkpoint; a resume must use the same one."""

    width: float = 1.0  # VGG16 width multiplier
    epochs: int = 160
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0  # linear ramp from 0 to lr
    schedule: str = "cosine"  # after warm-up: "cosine" to 0, or "onecycle" (linear to 0)
    label_smoothing: float = 0.0
    seed: int = 0
    holdout: int = 5000  # tail of the training split kept out for validation and pruning calibration
    train_limit: int | None = None  # use only the first N training images (smoke runs)
    test_limit: int | None = None  # evaluate on the first N test images (smoke runs); None = all 10,000
    channels_last: bool = True  # NHWC activations: faster convolutions on CPU (oneDNN) and GPU
    threads: int | None = None  # torch intra-op threads; None = torch's default

    def __post_init__(self) -> None:
        checks = [(self.width > 0, "width must be > 0"), (self.epochs >= 1, "epochs must be >= 1"),
                  (self.batch_size >= 2, "batch_size must be >= 2 (BatchNorm needs two samples)"),
                  (self.lr > 0, "lr must be > 0"), (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
                  (self.weight_decay >= 0, "weight_decay must be >= 0"),
                  (0 <= self.warmup_epochs <= self.epochs, "warmup_epochs must be in [0, epochs]"),
                  (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
                  (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
                  (self.holdout >= 0, "holdout must be >= 0"),
                  (self.train_limit is None or self.train_limit >= self.batch_size,
                   "train_limit must be at least one batch"),
                  (self.test_limit is None or self.test_limit >= 1, "test_limit must be >= 1"),
                  (self.threads is None or self.threads >= 1, "threads must be >= 1")]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise PipelineError("bad training options: " + "; ".join(problems))


PRESETS: dict[str, TrainConfig] = {
    # Seconds on a laptop: exercises every code path; accuracy is meaningless.
    "smoke": TrainConfig(width=0.0625, epochs=2, batch_size=64, lr=0.05, warmup_epochs=0.5, holdout=500,
                         train_limit=1024, test_limit=500),
    # About 10 minutes on 2 CPU cores: a quarter-width VGG16 (0.95M params, 20M MACs).
    "quick": TrainConfig(width=0.25, epochs=10, batch_size=256, lr=0.2, warmup_epochs=1.0, schedule="onecycle",
                         label_smoothing=0.1),
    # The literature's full-width VGG16-BN on CIFAR-10 (Li et al. 2017; Zhang et al. 2020): for a GPU.
    "paper": TrainConfig(width=1.0, epochs=160, batch_size=128, lr=0.1, warmup_epochs=1.0, schedule="cosine"),
}


def _parse(value: str, annotation: str, name: str):
    kind = annotation.replace(" | None", "")
    if value.lower() in ("none", "") and "None" in annotation:
        return None
    try:
        if kind == "bool":
            lowered = value.lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return lowered in ("1", "true", "yes")
        return {"int": int, "float": float, "str": str}[kind](value)
    except ValueError:
        raise PipelineError(f"option --{name.replace('_', '-')} expects {annotation}, got {value!r}") from None


def make_config(preset: str, overrides: dict[str, str | int | float | bool | None] | None = None) -> TrainConfig:
    """A preset with command-line overrides applied; an override of None leaves the preset's value."""
    if preset not in PRESETS:
        raise PipelineError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    hints = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    changes = {}
    for name, value in (overrides or {}).items():
        if name not in hints:
            raise PipelineError(f"unknown training option {name!r}; known: {', '.join(hints)}")
        if value is not None:
            changes[name] = _parse(str(value), hints[name], name)
    return dataclasses.replace(PRESETS[preset], **changes)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, schedule: str) -> float:
    """Learning rate for optimiser step `step` (0-based): linear warm-up to `peak`, then cosine or linear to 0."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * progress))
    return peak * (1 - progress)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The only source of randomness in an epoch (order and augmentation), so a resumed run repeats it exactly."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


@torch.no_grad()
def evaluate(model: nn.Module, split: cifar.Split, batch_size: int = 500, channels_last: bool = True) -> dict:
    """Top-1 accuracy (fraction) and mean cross-entropy of `model` on `split`."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for images, labels in cifar.batches(split, batch_size, channels_last=channels_last):
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
    model.train(was_training)
    return {"top1": correct / len(split), "loss": loss_sum / len(split), "images": len(split)}


def model_from_checkpoint(checkpoint: dict) -> nn.Module:
    model = build_model(checkpoint["arch"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, KeyError) as err:
        raise PipelineError(f"checkpoint weights do not match its architecture description: {err}") from err
    return model


def _check_resumable(checkpoint: dict, config: TrainConfig, path: Path) -> None:
    saved = checkpoint.get("recipe", {})
    differing = [name for name, value in dataclasses.asdict(config).items()
                 if name != "threads" and saved.get(name) != value]
    if differing:
        details = ", ".join(f"{name}: checkpoint {saved.get(name)!r} vs now {getattr(config, name)!r}"
                            for name in differing)
        raise PipelineError(f"cannot resume {path} with a different recipe ({details}); "
                            f"rerun with the same options, or start a new run with another --out.")


def train(config: TrainConfig, data: cifar.Cifar10, out_dir: str | Path, resume: bool = False,
          overwrite: bool = False, progress: bool = True) -> dict:
    """Trains VGG16 per `config`, writing `out_dir/checkpoint.pt` after every epoch; returns the final checkpoint.

    resume=True continues from that checkpoint's epoch with identical results to an uninterrupted run.
    """
    path = Path(out_dir) / CHECKPOINT_NAME
    if config.threads:
        torch.set_num_threads(config.threads)
    train_split = data.train.head(config.train_limit)
    test_split = data.test.head(config.test_limit)
    steps_per_epoch = len(train_split) // config.batch_size
    total_steps, warmup_steps = steps_per_epoch * config.epochs, round(steps_per_epoch * config.warmup_epochs)

    torch.manual_seed(config.seed)
    spec = vgg16_spec(config.width, num_classes=len(cifar.CLASSES))
    model = build_model(spec)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    start_epoch, history = 0, []
    if path.exists():
        if resume:
            checkpoint = load_checkpoint(path)
            _check_resumable(checkpoint, config, path)
            model = model_from_checkpoint(checkpoint)
            optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                        nesterov=config.nesterov, weight_decay=config.weight_decay)
            optimizer.load_state_dict(checkpoint["optimizer"])
            start_epoch, history = checkpoint["epoch"], list(checkpoint["history"])
            print(f"resuming {path} after epoch {start_epoch}/{config.epochs}")
        elif not overwrite:
            raise PipelineError(f"{path} already exists; pass --resume to continue it, --overwrite to start over, "
                                f"or --out to train into another folder.")
    elif resume:
        print(f"nothing to resume at {path}; starting from scratch")
    if start_epoch >= config.epochs:
        print(f"{path} already finished all {config.epochs} epochs")
        return checkpoint
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    cost = count_cost(model)

    def snapshot(epoch: int, metrics: dict) -> dict:
        return {"arch": spec.to_dict(), "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epoch, "recipe": dataclasses.asdict(config), "history": history, "metrics": metrics,
                "cost": cost.to_dict(), "seed": config.seed,
                "data": {"mean": list(cifar.MEAN), "std": list(cifar.STD), "classes": list(cifar.CLASSES),
                         "train_images": len(train_split), "holdout_images": len(data.holdout)}}

    for epoch in range(start_epoch, config.epochs):
        model.train()
        generator = epoch_generator(config.seed, epoch)
        loss_sum, correct, seen, started = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(cifar.batches(train_split, config.batch_size, generator=generator, train=True,
                                 channels_last=config.channels_last),
                   total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress,
                   leave=False, unit="batch")
        for step, (images, labels) in enumerate(bar, start=epoch * steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup_steps, config.lr, config.schedule)
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                            img_s=f"{seen / (time.perf_counter() - started):.0f}")
        seconds = time.perf_counter() - started
        record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_top1": correct / seen,
                  "seconds": seconds, "images_per_s": seen / seconds}
        if len(data.holdout):
            record["holdout_top1"] = evaluate(model, data.holdout, channels_last=config.channels_last)["top1"]
        history.append(record)
        print(f"epoch {epoch + 1}/{config.epochs}: loss {record['train_loss']:.3f}, train {record['train_top1']:.2%}"
              + (f", holdout {record['holdout_top1']:.2%}" if "holdout_top1" in record else "")
              + f", {record['images_per_s']:.0f} img/s, {seconds:.0f} s", flush=True)
        final = epoch + 1 == config.epochs
        metrics = {"test": evaluate(model, test_split, channels_last=config.channels_last)} if final else {}
        save_checkpoint(path, snapshot(epoch + 1, metrics))
    print(f"test top-1 {metrics['test']['top1']:.2%} on {metrics['test']['images']} images; "
          f"{cost.macs / 1e6:.1f}M MACs, {cost.params / 1e6:.2f}M params; checkpoint {path}")
    return snapshot(config.epochs, metrics)
