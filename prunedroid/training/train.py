"""Train and evaluate: SGD + warm-up/cosine or one-cycle, a checkpoint every epoch, exact resume."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from prunedroid import data as cifar
from prunedroid.errors import PrunedroidError
from prunedroid.files import file_sha256, folder_lock, refuse_holding
from prunedroid.models import MODELS, build_model, fresh_arch
from prunedroid.models.registry import width_help
from prunedroid.options import MAX_SEED, MAX_THREADS, option, with_options
from prunedroid.pruning.cost import count_cost
from prunedroid.training.checkpoint import Checkpoint, weights_sha256
from prunedroid.training.distributed import World, joined, with_global_batchnorm

CHECKPOINT_NAME = "checkpoint.pt"
SCHEDULES = ("cosine", "onecycle")


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe. Stored in every checkpoint; a resume must use the same one. The defaults are the paper
    preset's; the command line starts from a preset (PRESETS) and each option overrides it."""

    model: str = option("vgg16", f"architecture: {', '.join(MODELS)} (CIFAR variants)")
    width: float = option(1.0, width_help())
    epochs: int = option(160, "training epochs")
    batch_size: int = option(128, "images per optimiser step")
    lr: float = option(0.1, "peak learning rate (SGD)")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(True, "Nesterov momentum: yes/no")
    weight_decay: float = option(5e-4, "L2 weight decay")
    warmup_epochs: float = option(1.0, "epochs of linear learning-rate warm-up from 0")
    schedule: str = option("cosine", "after warm-up: cosine or onecycle (linear decay to 0)")
    label_smoothing: float = option(0.0, "label smoothing in [0, 1)")
    distill_weight: float = option(0.0, "share of the loss distilled from --teacher, in [0, 1] (0: cross-entropy "
                                        "only)")
    distill_temperature: float = option(4.0, "softmax temperature of the distillation (Hinton et al. 2015)")
    seed: int = option(0, "random seed (initialisation, order, augmentation)")
    holdout: int = option(5000, "training images held out for validation and pruning calibration (the split's "
                                "tail)")
    train_limit: int | None = option(None, "train on the first N training images only")
    test_limit: int | None = option(None, "evaluate on the first N test images only (default: all 10,000)")
    channels_last: bool = option(True, "NHWC memory format: yes/no (faster convolutions on CPU and GPU)")
    threads: int | None = option(None, "torch intra-op threads (default: torch's choice)")
    device: str = option("auto", "auto (a CUDA GPU when present), cpu, cuda or cuda:N")
    nproc: int = option(1, "processes to train in on this machine, data-parallel under torchrun (gloo on the CPU, "
                           "NCCL with one GPU each); `batch_size` stays the global batch, so the recipe is the same")

    def __post_init__(self) -> None:
        checks = [(self.model in MODELS, f"model must be one of {', '.join(MODELS)}"),
                  (self.width > 0, "width must be > 0"), (self.epochs >= 1, "epochs must be >= 1"),
                  (self.batch_size >= 2, "batch_size must be >= 2 (BatchNorm needs two samples)"),
                  (self.lr > 0, "lr must be > 0"), (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
                  (self.weight_decay >= 0, "weight_decay must be >= 0"),
                  (0 <= self.warmup_epochs <= self.epochs, "warmup_epochs must be in [0, epochs]"),
                  (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
                  (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
                  (0 <= self.distill_weight <= 1, "distill_weight must be in [0, 1]"),
                  (self.distill_temperature > 0, "distill_temperature must be > 0"),
                  (self.holdout >= 0, "holdout must be >= 0"),
                  (self.train_limit is None or self.train_limit >= self.batch_size,
                   "train_limit must be at least one batch"),
                  (self.test_limit is None or self.test_limit >= 1, "test_limit must be >= 1"),
                  (type(self.seed) is int and 0 <= self.seed <= MAX_SEED,
                   f"seed must be a whole number in 0..{MAX_SEED}"),
                  (self.threads is None or 1 <= self.threads <= MAX_THREADS, f"threads must be in 1..{MAX_THREADS}"),
                  (self.nproc >= 1, "nproc must be >= 1"),
                  (self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
                   "device must be auto, cpu, cuda[:N] or mps")]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise PrunedroidError("bad training options: " + "; ".join(problems))


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

# Fine-tuning a pruned model: the training preset's recipe with a short, gentle schedule.
FINETUNE_OVERRIDES: dict[str, dict] = {
    "smoke": {"epochs": 1, "lr": 0.01, "warmup_epochs": 0.0},
    "quick": {"epochs": 3, "lr": 0.02, "warmup_epochs": 0.0, "schedule": "cosine"},
    "paper": {"epochs": 40, "lr": 0.01, "warmup_epochs": 0.0, "schedule": "cosine"},
}


def make_config(preset: str, overrides: dict[str, str | int | float | bool | None] | None = None,
                finetune: bool = False) -> TrainConfig:
    """A preset for the model the overrides name (VGG16 unless they name one; its entry's `presets`), its fine-tuning
    variant with finetune=True, with command-line overrides applied; an override of None leaves the preset's
    value."""
    if preset not in PRESETS:
        raise PrunedroidError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    model = str((overrides or {}).get("model") or PRESETS[preset].model)
    changes = MODELS[model].presets.get(preset, {}) if model in MODELS else {}  # an unknown model: TrainConfig says
    base = dataclasses.replace(PRESETS[preset], **changes)
    if finetune:
        base = dataclasses.replace(base, **FINETUNE_OVERRIDES[preset])
    return with_options(base, overrides, "training")


def training_loss(logits: torch.Tensor, labels: torch.Tensor, config: TrainConfig,
                  teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy (with the recipe's label smoothing), mixed with knowledge distillation when the recipe has a
    distill_weight w > 0: (1 - w) CE + w T^2 KL(teacher || student) at temperature T, the T^2 keeping the
    distillation gradients at the scale of CE's whatever T. logits: (B, classes); labels: (B,)."""
    cross_entropy = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
    if not config.distill_weight:
        return cross_entropy
    if teacher_logits is None:
        raise ValueError("a recipe with distill_weight > 0 needs the teacher's logits")
    temperature = config.distill_temperature
    distillation = F.kl_div(F.log_softmax(logits / temperature, 1), F.log_softmax(teacher_logits / temperature, 1),
                            reduction="batchmean", log_target=True) * temperature ** 2
    return (1 - config.distill_weight) * cross_entropy + config.distill_weight * distillation


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, schedule: str) -> float:
    """Learning rate for optimiser step `step` (0-based): linear warm-up to `peak`, then cosine or linear to 0."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * progress))
    return peak * (1 - progress)


# Options that change where and how fast a run goes, not what it computes: a resume may change them.
NON_RECIPE_OPTIONS = ("threads", "device", "nproc")


def recipe_of(config: TrainConfig) -> dict:
    """The options that decide what a run trains (all but where and how fast: NON_RECIPE_OPTIONS), as plain data."""
    return {name: value for name, value in dataclasses.asdict(config).items() if name not in NON_RECIPE_OPTIONS}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PrunedroidError(f"device {name!r} asked for, but this torch build sees no CUDA GPU; use --device cpu")
    return torch.device(name)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The only source of randomness in an epoch (order and augmentation), so a resumed run repeats it exactly."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def onednn_fails_on_conv(module: nn.Module) -> bool:
    """Whether `module` is a strided 1x1 convolution with fewer than 8 input channels per group (a narrow ResNet's
    shortcut, as at the smoke widths or after heavy pruning).

    Why it matters: with torch 2.13 on an AVX2-only CPU (an AMD EPYC here), oneDNN's kernel for the weight gradient
    of such a convolution in channels-last layout writes out of bounds - training aborts or segfaults on one thread
    and hangs on two, at random steps (benchmarks/results/onednn_defect.md). A one-channel input cannot be put in
    NCHW (its strides read as either layout), so a model with one trains with oneDNN off: PyTorch's own kernels,
    slower and right."""
    return (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.stride != (1, 1)
            and module.in_channels // module.groups < 8)


def onednn_fails_on(arch: dict) -> bool:
    """Whether the model of `arch` has a convolution onednn_fails_on_conv names."""
    with torch.device("meta"):
        model = build_model(arch)
    return any(onednn_fails_on_conv(module) for module in model.modules())


@torch.no_grad()
def evaluate(model: nn.Module, split: cifar.Split, batch_size: int = 500, channels_last: bool = True,
             per_image: bool = False) -> dict:
    """Top-1 accuracy (fraction) and mean cross-entropy of `model` on `split`, on the model's device; per_image adds
    "correct", a bool (N,) CPU tensor saying which images it got right (for paired comparisons of two models)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct, loss_sum = [], torch.zeros((), device=device)
    for images, labels in cifar.batches(split.to(device), batch_size, channels_last=channels_last):
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        correct.append(logits.argmax(1) == labels)
    model.train(was_training)
    hits = torch.cat(correct)
    result = {"top1": hits.sum().item() / len(split), "loss": loss_sum.item() / len(split), "images": len(split)}
    return {**result, "correct": hits.cpu()} if per_image else result


@torch.no_grad()
def remeasure_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 256,
                        augment_seed: int | None = None) -> nn.Module:
    """A copy of `model` whose BatchNorm running statistics are re-measured on `images` (uint8 (n, 3, 32, 32)), as a
    plain average over the batches; no weight changes. Returned in eval mode.

    augment_seed: measure on one seeded random crop and flip of each image - the statistics training normalised
    with - instead of the images as they are (benchmarks/archive/results/bn_calibration.md compares the two)."""
    if augment_seed is not None:
        images = cifar.augment(images, torch.Generator().manual_seed(augment_seed))
    measured = copy.deepcopy(model)  # not Checkpoint.model: its shape checks cost more than a small model's pass
    return measure_batchnorm(measured, cifar.normalize(images).split(batch_size))


def measure_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """`model` itself, its BatchNorm running statistics set to the plain average over `batches` (inputs as it takes
    them, e.g. normalised images (n, 3, H, W)); no weight changes. Returned in eval mode."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average, not an exponential one
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    return model.eval()


def _check_resumable(checkpoint: Checkpoint, config: TrainConfig, path: Path, init: dict | None,
                     teacher: dict | None) -> None:
    """Refuses to resume `path` with another recipe, another model to start from (init: the weights' fingerprint)
    or another teacher (its file's SHA-256), naming each difference."""
    saved = {"model": "vgg16", **checkpoint.recipe}  # checkpoints from before --model were all VGG16
    differing = [f"{name}: checkpoint {saved.get(name)!r} vs now {value!r}"
                 for name, value in recipe_of(config).items() if saved.get(name) != value]
    if (checkpoint.init or {}).get("weights_sha256") != (init or {}).get("weights_sha256"):
        differing.append("--checkpoint: the run fine-tunes other weights than the checkpoint given now")
    if (checkpoint.teacher or {}).get("sha256") != (teacher or {}).get("sha256"):
        differing.append(f"--teacher: the run distils from {(checkpoint.teacher or {}).get('checkpoint')!r}, "
                         f"now {(teacher or {}).get('checkpoint')!r}")
    if differing:
        raise PrunedroidError(f"cannot resume {path} with different options ({', '.join(differing)}); "
                              f"rerun with the same options, or start a new run with another --out.")


def train(config: TrainConfig, data: cifar.Cifar10, out_dir: str | Path, resume: bool = False,
          overwrite: bool = False, progress: bool = True, init: Checkpoint | None = None,
          teacher: str | Path | None = None) -> Checkpoint:
    """Trains the recipe's model per `config`, writing `out_dir/checkpoint.pt` after every epoch; returns the final
    checkpoint.

    init: a checkpoint to start from (fine-tuning a pruned model): its architecture and weights replace the fresh
    `config.width` model, and its `pruning` record is carried into the new checkpoint.
    teacher: the checkpoint distilled from when config.distill_weight > 0 (typically the unpruned base); its path and
    SHA-256 are recorded in the checkpoint.

    resume=True continues from that checkpoint's epoch; on the CPU the result is bit-identical to an uninterrupted
    run (on a GPU, cuDNN's kernel choice may differ in the last bits). `out_dir` is locked while training runs.

    Under torchrun (prunedroid.training.distributed.World) each process trains on its slice of every global batch;
    process 0 alone prints, evaluates and writes, and every process returns the same checkpoint.
    """
    refuse_holding(out_dir, {"--teacher": teacher})
    images = len(data.train.head(config.train_limit))
    if images < config.batch_size:  # training drops an incomplete batch: no step would ever be taken
        raise PrunedroidError(f"{images} training images make no batch of {config.batch_size}: lower --batch-size, "
                              f"hold out fewer images (--holdout) or train on more (--train-limit)")
    world = World.from_environment()
    with joined(world), contextlib.ExitStack() as held:
        device = world.agree(lambda: world.device(resolve_device(config.device)))
        world.led(lambda: held.enter_context(folder_lock(out_dir)))
        arch = init.arch if init is not None else fresh_arch(config.model, config.width, len(cifar.CLASSES))
        if device.type == "cpu" and config.channels_last and onednn_fails_on(arch):
            held.enter_context(torch.backends.mkldnn.flags(enabled=False))
        return _train(config, data, Path(out_dir) / CHECKPOINT_NAME, resume, overwrite, progress and world.leads,
                      init, teacher, world, device)


@dataclass
class _Start:
    """What a run starts from: the teacher (distillation), the checkpoint to continue or fine-tune (None: a fresh
    model) and the records that identify both."""

    teacher: nn.Module | None
    teacher_record: dict | None
    init_record: dict | None
    checkpoint: Checkpoint | None


def _start(config: TrainConfig, path: Path, resume: bool, overwrite: bool, init: Checkpoint | None,
           teacher_path: str | Path | None, world: World, device: torch.device) -> _Start:
    memory_format = torch.channels_last if config.channels_last else torch.preserve_format
    if bool(config.distill_weight) != (teacher_path is not None):
        raise PrunedroidError("distillation needs both a --distill-weight above 0 and a teacher checkpoint (--teacher; "
                              "`invoke pipeline` uses the base)" if config.distill_weight else
                              "a teacher was given but --distill-weight is 0: pass --distill-weight (e.g. 0.5)")
    if config.batch_size % world.size:
        raise PrunedroidError(f"`batch_size` {config.batch_size} does not split evenly over {world.size} processes: "
                              f"pass a multiple of {world.size}")
    teacher, teacher_record = None, None
    if teacher_path is not None:
        teacher = Checkpoint.load(teacher_path).model().eval()
        teacher = teacher.to(device, memory_format=memory_format)  # type: ignore[call-overload]
        teacher_record = {"checkpoint": str(teacher_path), "sha256": file_sha256(teacher_path)}
    init_record = None if init is None else {"weights_sha256": weights_sha256(init.state_dict)}
    # What training starts from: the weights given (fine-tuning), a checkpoint to resume, or None (a fresh model).
    checkpoint = None if init is None else Checkpoint(arch=init.arch, state_dict=init.state_dict, pruning=init.pruning)
    if path.exists() and resume:
        checkpoint = Checkpoint.load(path)
        _check_resumable(checkpoint, config, path, init_record, teacher_record)
        if world.leads:
            print(f"resuming {path} after epoch {checkpoint.epoch}/{config.epochs}")
    elif path.exists() and not overwrite:
        raise PrunedroidError(f"{path} already exists; pass --resume to continue it, --overwrite to start over, "
                              f"or --out to train into another folder.")
    elif resume and world.leads:
        print(f"nothing to resume at {path}; starting from scratch")
    return _Start(teacher, teacher_record, init_record, checkpoint)


def _train(config: TrainConfig, data: cifar.Cifar10, path: Path, resume: bool, overwrite: bool, progress: bool,
           init: Checkpoint | None, teacher_path: str | Path | None, world: World,
           device: torch.device) -> Checkpoint:
    memory_format = torch.channels_last if config.channels_last else torch.preserve_format
    if config.threads:
        torch.set_num_threads(config.threads)
    elif world.local_size > 1 and device.type == "cpu":  # the machine's cores shared, not each process taking all
        torch.set_num_threads(max(1, torch.get_num_threads() // world.local_size))
    if init is not None:  # the recorded recipe names the model and width actually trained
        config = dataclasses.replace(config, **{key: init.recipe[key] for key in ("model", "width")
                                                if key in init.recipe})
    start = world.agree(lambda: _start(config, path, resume, overwrite, init, teacher_path, world, device))
    checkpoint, teacher = start.checkpoint, start.teacher
    if resume and checkpoint is not None and checkpoint.epoch >= config.epochs:
        return checkpoint
    train_split = data.train.head(config.train_limit).to(device)
    holdout, test_split = data.holdout.to(device), data.test.head(config.test_limit).to(device)
    steps_per_epoch = len(train_split) // config.batch_size
    total_steps, warmup_steps = steps_per_epoch * config.epochs, round(steps_per_epoch * config.warmup_epochs)

    torch.manual_seed(config.seed)
    arch = checkpoint.arch if checkpoint else fresh_arch(config.model, config.width, len(cifar.CLASSES))
    model = checkpoint.model() if checkpoint else build_model(arch)
    cost = count_cost(model)
    # torch's stubs lack Module.to's memory_format, which it takes (and documents).
    model = model.to(device, memory_format=memory_format)  # type: ignore[call-overload]
    stepped: nn.Module = model  # what the optimiser's steps run: the model, or its data-parallel wrapper
    if world.distributed:
        stepped = DistributedDataParallel(with_global_batchnorm(model), forward_sync_buffers=False,
                                          device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    if checkpoint and checkpoint.optimizer:
        optimizer.load_state_dict(checkpoint.optimizer)
    history = list(checkpoint.history) if checkpoint else []
    pruning = checkpoint.pruning if checkpoint else None

    for epoch in range(checkpoint.epoch if checkpoint else 0, config.epochs):
        model.train()
        generator = epoch_generator(config.seed, epoch)
        loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device)
        seen, started = 0, time.perf_counter()
        bar = tqdm(cifar.batches(train_split, config.batch_size, generator=generator, train=True,
                                 channels_last=config.channels_last),
                   total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress,
                   leave=False, unit="batch")
        for step, (batch_images, batch_labels) in enumerate(bar, start=epoch * steps_per_epoch):
            images, labels = world.shard(batch_images), world.shard(batch_labels)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup_steps, config.lr, config.schedule)
            logits = stepped(images)
            teacher_logits = None
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(images)
            loss = training_loss(logits, labels, config, teacher_logits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
            if progress and step % 10 == 0:  # .item() waits for the GPU: not every step
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                                img_s=f"{seen * world.size / (time.perf_counter() - started):.0f}")
        seconds = time.perf_counter() - started
        loss_total, correct_total, seen_total = world.total(
            torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(seen), device=device)])).tolist()
        if not math.isfinite(loss_total):  # checked once an epoch: a per-step .item() would stall a GPU
            kept = (f"{path} still holds epoch {checkpoint.epoch}" if checkpoint and path.exists()
                    else "nothing was saved")
            raise PrunedroidError(f"training diverged in epoch {epoch + 1} (the loss became NaN or infinite); {kept}. "
                                  f"Lower --lr (now {config.lr}) or lengthen --warmup-epochs and start again.")
        record = {"epoch": epoch + 1, "train_loss": loss_total / seen_total, "train_top1": correct_total / seen_total,
                  "seconds": seconds, "images_per_s": seen_total / seconds}
        if len(holdout):
            record["holdout_top1"] = world.from_leader(
                functools.partial(evaluate, model, holdout, channels_last=config.channels_last))["top1"]
        history.append(record)
        if world.leads:
            print(f"epoch {epoch + 1}/{config.epochs}: loss {record['train_loss']:.3f}, "
                  f"train {record['train_top1']:.2%}"
                  + (f", holdout {record['holdout_top1']:.2%}" if "holdout_top1" in record else "")
                  + f", {record['images_per_s']:.0f} img/s, {seconds:.1f} s", flush=True)
        final = epoch + 1 == config.epochs
        metrics = {"test": world.from_leader(functools.partial(evaluate, model, test_split,
                                                               channels_last=config.channels_last))} if final else {}
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
        checkpoint = Checkpoint(
            arch=arch, epoch=epoch + 1, history=history, cost=cost.to_dict(),
            state_dict={k: v.cpu() for k, v in model.state_dict().items()},
            optimizer=optimizer.state_dict(), recipe=dataclasses.asdict(config), seed=config.seed, metrics=metrics,
            data={"mean": list(cifar.MEAN), "std": list(cifar.STD), "classes": list(cifar.CLASSES),
                  "train_images": len(train_split), "holdout_images": len(holdout)},
            device=where if world.size == 1 else f"{world.size} processes, {where} each",
            pruning=pruning, teacher=start.teacher_record, init=start.init_record,
        )
        world.led(functools.partial(checkpoint.save, path))
    assert checkpoint is not None, "config.epochs >= 1 is checked by TrainConfig"
    test = checkpoint.metrics["test"]
    if world.leads:
        print(f"test top-1 {test['top1']:.2%} on {test['images']} images; {cost.macs / 1e6:.1f}M MACs, "
              f"{cost.params / 1e6:.2f}M params; checkpoint {path}")
    return checkpoint
