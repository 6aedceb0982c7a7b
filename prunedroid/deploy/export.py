"""Export to every registered format (prunedroid/deploy/formats.py: TorchScript Lite .ptl for PyTorch Mobile, ONNX, and
ExecuTorch .pte with XNNPACK), each loaded back in the runtime that will run it and checked against PyTorch;
optionally their int8 files, checked by test accuracy.

BatchNorm is folded into the preceding conv/linear first, so the files hold only what inference runs. Files are
written to temporary names, verified, and renamed into place only when they match the eager model, so a failed
export never leaves a model behind.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from prunedroid import data as cifar
from prunedroid.deploy.formats import FORMATS, int8_formats, predict
from prunedroid.deploy.probe import mark_runnable
from prunedroid.errors import PrunedroidError
from prunedroid.files import atomic_paths, file_sha256, folder_lock, plain_name, refuse_holding
from prunedroid.options import check, option, with_options
from prunedroid.pruning.cost import count_cost
from prunedroid.training.checkpoint import Checkpoint

MAX_ABS_DIFF = 1e-4  # logits, between the eager model and each exported fp32 file
VERIFY_IMAGES = 1000
MAX_INT8_DROP = 1.0  # points of test top-1 an int8 file may lose against fp32 before export refuses it


@dataclass(frozen=True)
class ExportResult:
    """files: format kind (prunedroid.deploy.formats.FORMATS) -> the file written; report: the sidecar's content."""

    files: dict[str, Path]
    sidecar: Path
    report: dict


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy with every BatchNorm merged into the conv/linear before it (and replaced by Identity)."""
    folded = copy.deepcopy(model).eval()
    for container in folded.modules():
        if not isinstance(container, nn.Sequential):
            continue
        for index in range(len(container) - 1):
            layer, norm = container[index], container[index + 1]
            if isinstance(layer, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                container[index] = fuse_conv_bn_eval(layer, norm)
            elif isinstance(layer, nn.Linear) and isinstance(norm, nn.BatchNorm1d):
                container[index] = fuse_linear_bn_eval(layer, norm)
            else:
                continue
            container[index + 1] = nn.Identity()
    return folded


def compare(reference: torch.Tensor, logits: torch.Tensor, runtime: str) -> dict:
    """Max |diff| and top-1 agreement of `logits` against the eager `reference`; raises when they disagree or either
    holds a NaN or infinity (a NaN difference compares false with any limit, so it must never be the test)."""
    for name, values in (("PyTorch", reference), (runtime, logits)):
        if not values.isfinite().all():
            raise PrunedroidError(f"{name} gives NaN or infinite outputs on {len(reference)} inputs; the model is "
                                  f"not usable: retrain or fine-tune it (a lower --lr)")
    max_abs_diff = (reference - logits).abs().max().item()
    same_top1 = (reference.argmax(1) == logits.argmax(1)).float().mean().item()
    if not (max_abs_diff <= MAX_ABS_DIFF and same_top1 == 1.0):
        raise PrunedroidError(f"{runtime} export disagrees with PyTorch on {len(reference)} inputs: max |diff| "
                              f"{max_abs_diff:.2e} (limit {MAX_ABS_DIFF:.0e}), top-1 agreement {same_top1:.2%}")
    return {"max_abs_diff": max_abs_diff, "top1_agreement": same_top1, "images": len(reference)}


@dataclass(frozen=True)
class Int8Options:
    """What `--quantize int8` asks for: how many held-out training images calibrate it, and how many points of test
    top-1 it may lose against fp32."""

    calibration_images: int = option(512, "held-out training images that calibrate int8 (never test images)")
    max_drop: float = option(MAX_INT8_DROP, "points of test top-1 int8 may lose against fp32; a larger drop refuses "
                                            "only when its paired 95% interval over the test images excludes zero")

    def __post_init__(self) -> None:
        check([(self.calibration_images >= 1, "`calibration_images` must be >= 1"),
               (0 <= self.max_drop <= 100, "`max_drop` is in points of top-1, 0..100")], "quantization")

    @classmethod
    def from_options(cls, quantize: str | None, overrides: dict[str, str | None]) -> Int8Options | None:
        """None unless `quantize` is "int8" (None or "none": no int8 files); option strings (None: the default)
        parsed and checked."""
        if quantize in (None, "none"):
            if any(value is not None for value in overrides.values()):
                given = ", ".join(f"`{k}`" for k, v in overrides.items() if v is not None)
                raise PrunedroidError(f"{given} given without `quantize` int8, the only export it applies to")
            return None
        if quantize != "int8":
            raise PrunedroidError(f"`quantize` is int8 or none, got {quantize!r}")
        return with_options(cls(), overrides, "quantization")


def paired_drop(reference: torch.Tensor, candidate: torch.Tensor) -> tuple[float, float, float]:
    """(drop, low, high): top-1 points `candidate` loses against `reference` on the same images (bool (N,) each:
    which it got right) and the drop's 95% interval. Paired (normal approximation of the difference of two
    proportions on the same images, as McNemar's test): only the images the two disagree on carry its spread, so a
    drop of six images of 500 between two near-identical models is told from one between two that differ widely."""
    images = len(reference)
    gained = (candidate & ~reference).sum().item()
    lost = (reference & ~candidate).sum().item()
    drop = (lost - gained) / images
    spread = 1.96 * max(lost + gained - (lost - gained) ** 2 / images, 0.0) ** 0.5 / images
    return 100 * drop, 100 * (drop - spread), 100 * (drop + spread)


def check_int8(fp32_correct: torch.Tensor, int8_correct: torch.Tensor, runtime: str, max_drop: float) -> None:
    """Refuses an int8 file that loses more than `max_drop` points of test top-1 against the fp32 model on the same
    images, where that loss is also told from chance (its paired 95% interval excludes zero): on a small test set
    or a chance-level model a few images' last-bit rounding, which differs between CPUs, must not decide."""
    drop, low, high = paired_drop(fp32_correct, int8_correct)
    if drop > max_drop and low > 0:
        raise PrunedroidError(f"int8 {runtime} loses {drop:.2f} points of top-1 on {len(fp32_correct)} test images "
                              f"(95% interval {low:.2f} to {high:.2f}; {100 * fp32_correct.float().mean():.2f}% -> "
                              f"{100 * int8_correct.float().mean():.2f}%), more than --max-drop {max_drop}; "
                              f"calibrate on more images (--calibration-images) or ship fp32")


Int8Writer = Callable[[nn.Module, nn.Module, dict[str, Path], dict[str, Path]], dict]


def export_model(model: nn.Module, inputs: torch.Tensor, out_dir: str | Path, name: str = "model",
                 dynamic_batch: bool = True, record: dict | None = None,
                 int8: Int8Writer | None = None) -> ExportResult:
    """Writes `name`.ptl, `name`.onnx, `name`.pte and `name`.json (the sidecar) for `model` into `out_dir`, BatchNorm
    folded first; with `int8` also `name`-int8.pte, `name`-int8.onnx and `name`-int8.ptl.

    inputs: (n, ...) inputs as the model takes them; every fp32 file must match the eager model's outputs on them
    within MAX_ABS_DIFF with the same argmax, or nothing is written. record: sidecar entries saying what the model
    is (its checkpoint, classes, normalisation); int8: writes and checks the int8 files given (folded model, eager
    model, temporary paths, final paths) and returns their sidecar entry."""
    plain_name(name, "--name")  # the files' stem: never a path out of `out_dir`
    out_dir = Path(out_dir)
    eager = copy.deepcopy(model).eval()  # the caller's model keeps its mode
    deploy = fold_batchnorm(model)
    with torch.no_grad():
        reference = eager(inputs)
        if not isinstance(reference, torch.Tensor):
            raise PrunedroidError(f"the model returns a {type(reference).__name__}, not one tensor of logits: the "
                                  f"runtimes and the app read one output; export a wrapper whose forward returns it")
        folding = compare(reference, deploy(inputs), "BatchNorm folding")
    paths = {kind: out_dir / f"{name}.{kind}" for kind in FORMATS}
    if int8 is not None:
        paths.update({f"int8_{entry.kind}": out_dir / f"{name}-int8.{entry.kind}" for entry in int8_formats()})
    # Last, so it lands after every file it describes; a process killed between two renames leaves files that no
    # longer match the old sidecar's hashes, which every reader checks (prunedroid/deploy/sidecar.py).
    paths["sidecar"] = out_dir / f"{name}.json"
    with folder_lock(out_dir), atomic_paths(list(paths.values())) as temporaries:
        # Every file goes to a temporary name and is renamed into place only when all of them have passed.
        tmp = dict(zip(paths, temporaries))
        notes = {kind: entry.write(deploy, tmp[kind], inputs[:1], dynamic_batch) for kind, entry in FORMATS.items()}
        verification = {"batchnorm_folding": folding, **{
            entry.check: compare(reference, predict(entry.load(tmp[kind], None), inputs), entry.title)
            for kind, entry in FORMATS.items()}}
        int8_entry = None if int8 is None else int8(deploy, eager, tmp, paths)
        cost = count_cost(model, tuple(inputs.shape[1:]))
        sidecar = {
            "model": name, **(record or {}), **{kind: paths[kind].name for kind in FORMATS},
            "input_shape": [1, *inputs.shape[1:]], "macs": cost.macs, "params": cost.params,
            **{entry.notes: notes[kind] for kind, entry in FORMATS.items()},
            **{key: value for kind in FORMATS for key, value in _size_and_hash(kind, tmp[kind]).items()},
            "int8": int8_entry, "verification": verification,
        }
        tmp["sidecar"].write_text(json.dumps(sidecar, indent=2) + "\n")
    return ExportResult({kind: paths[kind] for kind in FORMATS}, paths["sidecar"], sidecar)


def export_checkpoint(checkpoint_path: str | Path, test: cifar.Split, out_dir: str | Path, name: str = "model",
                      dynamic_batch: bool = True, verify_images: int = VERIFY_IMAGES,
                      calibration: cifar.Split | None = None, max_drop: float = MAX_INT8_DROP) -> ExportResult:
    """export_model for a checkpoint of this project, its sidecar carrying what the app and the benchmarks read (the
    checkpoint and its hash, CIFAR-10's classes and normalisation, the architecture, test top-1, the pruning);
    with `calibration` images also the int8 files.

    test: real images to compare on: the first `verify_images` for the fp32 files; an int8 file cannot match bit
    for bit, so its test top-1 on all of `test` must be within `max_drop` points of the fp32 model's.
    calibration: held-out *training* images (never test images) that set the int8 activation ranges.
    """
    if len(test) < verify_images:
        raise PrunedroidError(f"export verification needs {verify_images} test images, got {len(test)}")
    refuse_holding(out_dir, {"--checkpoint": checkpoint_path})
    checkpoint = Checkpoint.load(checkpoint_path)
    test_metrics = checkpoint.metrics.get("test") or {}
    record = {
        "checkpoint": str(Path(checkpoint_path).resolve()), "checkpoint_sha256": file_sha256(checkpoint_path),
        "classes": list(cifar.CLASSES), "input_layout": "NCHW, RGB, float32",
        "mean": list(cifar.MEAN), "std": list(cifar.STD), "pixel_scale": 1 / 255, "arch": checkpoint.arch,
        "test_top1": test_metrics.get("top1"), "test_images": test_metrics.get("images"),
        "pruning": {k: v for k, v in (checkpoint.pruning or {}).items() if k != "layers"} or None,
    }
    int8 = None if calibration is None else (
        lambda deploy, eager, tmp, paths: _export_int8(deploy, eager, test, calibration, tmp, paths, max_drop))
    return export_model(checkpoint.model(), cifar.normalize(test.images[:verify_images]), out_dir,
                        name, dynamic_batch, record, int8)


def _size_and_hash(kind: str, path: Path) -> dict:
    """The sidecar's `<kind>_bytes` and `<kind>_sha256` for the file written, and run, at `path`."""
    sha256 = file_sha256(path)
    mark_runnable(sha256)  # it ran in this process's runtimes during verification: no child process needed later
    return {f"{kind}_bytes": path.stat().st_size, f"{kind}_sha256": sha256}


def _export_int8(deploy: nn.Module, eager: nn.Module, test: cifar.Split, calibration: cifar.Split,
                 tmp: dict[str, Path], paths: dict[str, Path], max_drop: float) -> dict:
    """Writes the int8 .pte, .onnx and .ptl to their temporary paths and checks each one's top-1 on all of `test`
    against the fp32 model's (check_int8); returns their sidecar entry."""
    if not len(calibration):
        raise PrunedroidError("int8 calibration needs held-out training images, but the base held out none; train it "
                              "with --holdout > 0")
    calibration_images = cifar.normalize(calibration.images)
    every_test_image = cifar.normalize(test.images)
    with torch.no_grad():
        fp32_correct = torch.cat([eager(batch) for batch in every_test_image.split(500)]).argmax(1) == test.labels
    formats = int8_formats()
    written = {entry.kind: tmp[f"int8_{entry.kind}"] for entry in formats}  # kind -> the int8 file's temporary path
    notes = {entry.kind: entry.write_int8(deploy, written[entry.kind], calibration_images, tmp[entry.kind])
             for entry in formats if entry.write_int8 is not None}
    correct = {entry.runtime: predict(entry.load(written[entry.kind], None), every_test_image).argmax(1)
               == test.labels for entry in formats}
    for runtime, int8_correct in correct.items():
        check_int8(fp32_correct, int8_correct, runtime, max_drop)
    fp32_top1 = fp32_correct.float().mean().item()
    measured = {runtime: values.float().mean().item() for runtime, values in correct.items()}
    return {**{entry.kind: paths[f"int8_{entry.kind}"].name for entry in formats},
            **{key: value for kind, path in written.items() for key, value in _size_and_hash(kind, path).items()},
            **{entry.int8_notes: notes[entry.kind] for entry in formats},
            "calibration": f"{len(calibration)} held-out training images", "test_images": len(test),
            "fp32_test_top1": fp32_top1, "test_top1": measured, "max_drop_points": max_drop}
