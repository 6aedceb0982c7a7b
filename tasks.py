"""prunedroid tasks: `invoke --list`, `invoke <task> --help`. Tasks only parse options and call the package."""
from __future__ import annotations

import functools
import sys
from pathlib import Path

from invoke import Exit, task

from pipeline.errors import PipelineError

TRAIN_HELP = {
    "preset": "smoke (seconds, for tests), quick (~10 min on 2 CPU cores) or paper (full VGG16-BN, for a GPU); "
              "every option below overrides it",
    "out": "run folder for the checkpoint (default runs/<preset>)",
    "data_dir": "folder with the CIFAR-10 python batches (default: $CIFAR10_DIR, then data/cifar-10-batches-py; "
                "downloaded there if missing)",
    "resume": "continue from the run folder's checkpoint (same options required)",
    "overwrite": "start over even if the run folder already has a checkpoint",
    "width": "VGG16 width multiplier (1.0 = 64..512 channels)",
    "epochs": "training epochs",
    "batch_size": "images per optimiser step",
    "lr": "peak learning rate (SGD)",
    "momentum": "SGD momentum",
    "nesterov": "Nesterov momentum: yes/no",
    "weight_decay": "L2 weight decay",
    "warmup_epochs": "epochs of linear learning-rate warm-up",
    "schedule": "after warm-up: cosine or onecycle (linear decay to 0)",
    "label_smoothing": "label smoothing in [0, 1)",
    "seed": "random seed (initialisation, order, augmentation)",
    "holdout": "training images held out for validation and pruning calibration (the split's tail)",
    "train_limit": "train on the first N training images only",
    "test_limit": "evaluate on the first N test images only (default: all 10,000)",
    "channels_last": "NHWC memory format: yes/no",
    "threads": "torch intra-op threads (default: torch's choice)",
    "device": "auto (a CUDA GPU when present), cpu, cuda or cuda:N",
}


def reports_errors(function):
    """Turns a PipelineError into a one-line message and exit code 2 instead of a traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except PipelineError as err:
            raise Exit(f"error: {err}", code=2) from None

    return wrapper


@task(help=TRAIN_HELP, auto_shortflags=False)
@reports_errors
def train(c, preset="quick", out=None, data_dir=None, resume=False, overwrite=False, width=None, epochs=None,
          batch_size=None, lr=None, momentum=None, nesterov=None, weight_decay=None, warmup_epochs=None,
          schedule=None, label_smoothing=None, seed=None, holdout=None, train_limit=None, test_limit=None,
          channels_last=None, threads=None, device=None):
    """Train VGG16-BN on CIFAR-10; writes <out>/checkpoint.pt every epoch."""
    from pipeline.data import load_cifar10
    from pipeline.train import make_config, train as run_training

    overrides = dict(width=width, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, nesterov=nesterov,
                     weight_decay=weight_decay, warmup_epochs=warmup_epochs, schedule=schedule,
                     label_smoothing=label_smoothing, seed=seed, holdout=holdout, train_limit=train_limit,
                     test_limit=test_limit, channels_last=channels_last, threads=threads, device=device)
    config = make_config(preset, overrides)
    data = load_cifar10(data_dir, holdout=config.holdout)
    run_training(config, data, out or Path("runs") / preset, resume=resume, overwrite=overwrite,
                 progress=sys.stderr.isatty())


@task(help={"checkpoint": "checkpoint to evaluate (e.g. runs/quick/checkpoint.pt)",
            "data_dir": TRAIN_HELP["data_dir"], "test_limit": "evaluate on the first N test images only"})
@reports_errors
def evaluate(c, checkpoint, data_dir=None, test_limit=None):
    """Top-1 on the CIFAR-10 test set (all 10,000 images), with MACs and parameters."""
    from pipeline.checkpoint import load_checkpoint
    from pipeline.cost import count_cost
    from pipeline.data import load_cifar10
    from pipeline.train import evaluate as run_evaluation, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(checkpoint))
    test = load_cifar10(data_dir, holdout=0).test.head(int(test_limit) if test_limit else None)
    result = run_evaluation(model, test)
    cost = count_cost(model)
    print(f"{checkpoint}: test top-1 {result['top1']:.2%} on {result['images']} images, loss {result['loss']:.4f}; "
          f"{cost.macs / 1e6:.1f}M MACs, {cost.params / 1e6:.3f}M params")


@task(help={"args": "extra pytest arguments, e.g. \"-k data -x\""})
def test(c, args=""):
    """Run the test suite; 'no tests collected' is a failure, not a pass."""
    result = c.run(f"{sys.executable} -m pytest {args}", warn=True, pty=False)
    if result.exited == 5:
        raise Exit("error: pytest collected no tests", code=5)
    if result.exited:
        raise Exit(code=result.exited)
