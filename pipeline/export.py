"""Export to TorchScript Lite (.ptl, for PyTorch Mobile) and ONNX, each loaded back and checked against PyTorch.

BatchNorm is folded into the preceding conv/linear first, so the files hold only what inference runs. Files are
written to temporary names, verified, and renamed into place only when they match the eager model, so a failed
export never leaves a model behind.
"""
from __future__ import annotations

import copy
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.jit.mobile
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from pipeline import data as cifar
from pipeline.checkpoint import atomic_path, folder_lock, load_checkpoint, model_from_checkpoint
from pipeline.cost import count_cost
from pipeline.errors import PipelineError

# TorchScript bytecode version of the .ptl files. The Android app's runtime, org.pytorch:pytorch_android_lite 1.13.1
# (the last release), is PyTorch 1.13, which writes v8 itself; PyTorch's mobile loader reads
# kMinSupportedBytecodeVersion..kMaxSupportedBytecodeVersion (4..9 in the sources checked). Newer torch builds may
# write newer bytecode, so exports are backported to v8 when needed.
TARGET_BYTECODE_VERSION = 8
ONNX_OPSET = 17
MAX_ABS_DIFF = 1e-4  # logits, between the eager model and each exported file
VERIFY_IMAGES = 1000


@dataclass(frozen=True)
class ExportResult:
    ptl: Path
    onnx: Path
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


def _write_ptl(model: nn.Module, path: Path) -> dict:
    """Script, freeze, optimise for mobile where this torch build can, save for the lite interpreter, and backport
    the bytecode to TARGET_BYTECODE_VERSION. Returns what was done."""
    scripted = torch.jit.freeze(torch.jit.script(model))
    notes = {}
    try:
        from torch.utils.mobile_optimizer import optimize_for_mobile
        scripted = optimize_for_mobile(scripted)
        notes["optimize_for_mobile"] = "applied"
    except Exception as err:  # e.g. a torch built without XNNPACK, as the CPU wheel this project pins
        notes["optimize_for_mobile"] = f"unavailable in this torch build ({type(err).__name__}: {str(err)[:120]})"
        warnings.warn(f"optimize_for_mobile skipped: {notes['optimize_for_mobile']}", stacklevel=2)
    scripted._save_for_lite_interpreter(str(path))
    produced = torch.jit.mobile._get_model_bytecode_version(str(path))
    if produced > TARGET_BYTECODE_VERSION:
        backported = path.with_suffix(".backport")
        try:
            if not torch.jit.mobile._backport_for_mobile(str(path), str(backported), TARGET_BYTECODE_VERSION):
                raise PipelineError(f"could not backport TorchScript bytecode {produced} to {TARGET_BYTECODE_VERSION}")
            backported.replace(path)
        finally:
            backported.unlink(missing_ok=True)
    notes["bytecode_version_produced"] = produced
    notes["bytecode_version"] = torch.jit.mobile._get_model_bytecode_version(str(path))
    return notes


def _write_onnx(model: nn.Module, path: Path, dynamic_batch: bool) -> dict:
    import onnx

    example = torch.zeros(1, *cifar.IMAGE_SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return {"opset": ONNX_OPSET, "dynamic_batch": dynamic_batch}


def compare(reference: torch.Tensor, logits: torch.Tensor, runtime: str) -> dict:
    """Max |diff| and top-1 agreement of `logits` against the eager `reference`; raises when they disagree or either
    holds a NaN or infinity (a NaN difference compares false with any limit, so it must never be the test)."""
    for name, values in (("PyTorch", reference), (runtime, logits)):
        if not values.isfinite().all():
            raise PipelineError(f"{name} gives NaN or infinite logits on {len(reference)} test images; the model is "
                                f"not usable: retrain or fine-tune it (a lower --lr)")
    max_abs_diff = (reference - logits).abs().max().item()
    same_top1 = (reference.argmax(1) == logits.argmax(1)).float().mean().item()
    if not (max_abs_diff <= MAX_ABS_DIFF and same_top1 == 1.0):
        raise PipelineError(f"{runtime} export disagrees with PyTorch on {len(reference)} test images: max |diff| "
                            f"{max_abs_diff:.2e} (limit {MAX_ABS_DIFF:.0e}), top-1 agreement {same_top1:.2%}")
    return {"max_abs_diff": max_abs_diff, "top1_agreement": same_top1, "images": len(reference)}


def run_lite(path: Path, images: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
    module = torch.jit.mobile._load_for_lite_interpreter(str(path))
    return torch.cat([module(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def run_onnx(path: Path, images: torch.Tensor, dynamic_batch: bool) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    step = 100 if dynamic_batch else 1
    return torch.cat([torch.from_numpy(session.run(None, {"input": images[i:i + step].numpy()})[0])
                      for i in range(0, len(images), step)])


def existing_sidecar(path: str | Path) -> Path:
    """`path`, or an error saying no export is there."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"no exported model at {path}; run `invoke export --checkpoint <checkpoint.pt>` first "
                            f"and pass the .json it writes")
    return path


def read_sidecar(path: str | Path) -> dict:
    """The sidecar JSON `invoke export` wrote at `path`, or an error naming what is wrong with it."""
    path = existing_sidecar(path)
    try:
        sidecar = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PipelineError(f"{path} is not a sidecar written by `invoke export` (not JSON: {err})") from None
    missing = [key for key in ("ptl", "onnx", "checkpoint", "macs", "params") if key not in sidecar]
    if not isinstance(sidecar, dict) or missing:
        raise PipelineError(f"{path} is not a sidecar written by `invoke export` (no {', '.join(missing)}); "
                            f"export again")
    return sidecar


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def export_checkpoint(checkpoint_path: str | Path, test: cifar.Split, out_dir: str | Path, name: str = "model",
                      dynamic_batch: bool = True, verify_images: int = VERIFY_IMAGES) -> ExportResult:
    """Writes `name`.ptl, `name`.onnx and `name`.json (the sidecar the app reads) into `out_dir`.

    test: real images to compare on (the first `verify_images`); both files must match the eager model's logits
    within MAX_ABS_DIFF with identical top-1, or nothing is written.
    """
    if len(test) < verify_images:
        raise PipelineError(f"export verification needs {verify_images} test images, got {len(test)}")
    out_dir = Path(out_dir)
    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint)
    eager = model.eval()
    deploy = fold_batchnorm(model)
    images = cifar.normalize(test.images[:verify_images])
    with torch.no_grad():
        reference = eager(images)
        folding = compare(reference, deploy(images), "BatchNorm folding")
    ptl_path, onnx_path, sidecar_path = (out_dir / f"{name}{suffix}" for suffix in (".ptl", ".onnx", ".json"))
    with folder_lock(out_dir):
        with atomic_path(ptl_path) as ptl_tmp, atomic_path(onnx_path) as onnx_tmp:
            ptl_notes = _write_ptl(deploy, ptl_tmp)
            onnx_notes = _write_onnx(deploy, onnx_tmp, dynamic_batch)
            with torch.no_grad():
                lite = compare(reference, run_lite(ptl_tmp, images), "TorchScript Lite")
            onnx_check = compare(reference, run_onnx(onnx_tmp, images, dynamic_batch), "ONNX")
            sizes = {"ptl_bytes": ptl_tmp.stat().st_size, "onnx_bytes": onnx_tmp.stat().st_size}
            hashes = {"ptl_sha256": file_sha256(ptl_tmp), "onnx_sha256": file_sha256(onnx_tmp)}
        cost = count_cost(model)
        test_metrics = checkpoint.get("metrics", {}).get("test", {})
        sidecar = {
            "model": name, "checkpoint": str(Path(checkpoint_path).resolve()),
            "checkpoint_sha256": file_sha256(checkpoint_path), "ptl": ptl_path.name, "onnx": onnx_path.name,
            "classes": list(cifar.CLASSES),
            "input_shape": [1, *cifar.IMAGE_SHAPE], "input_layout": "NCHW, RGB, float32",
            "mean": list(cifar.MEAN), "std": list(cifar.STD), "pixel_scale": 1 / 255,
            "arch": checkpoint["arch"], "macs": cost.macs, "params": cost.params,
            "test_top1": test_metrics.get("top1"), "test_images": test_metrics.get("images"),
            "pruning": {k: v for k, v in (checkpoint.get("pruning") or {}).items() if k != "layers"} or None,
            "torchscript": ptl_notes, "onnx_export": onnx_notes, **sizes, **hashes,
            "verification": {"batchnorm_folding": folding, "torchscript_lite": lite, "onnx": onnx_check},
        }
        with atomic_path(sidecar_path) as tmp:
            tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
    return ExportResult(ptl_path, onnx_path, sidecar_path, sidecar)
