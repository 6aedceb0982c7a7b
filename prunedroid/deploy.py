"""Export to TorchScript Lite (.ptl, for PyTorch Mobile), ONNX and ExecuTorch (.pte, XNNPACK), each loaded back in
the runtime that will run it and checked against PyTorch; optionally int8 .pte and .onnx, checked by test accuracy.

BatchNorm is folded into the preceding conv/linear first, so the files hold only what inference runs. Files are
written to temporary names, verified, and renamed into place only when they match the eager model, so a failed
export never leaves a model behind.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.jit.mobile
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from prunedroid import data as cifar
from prunedroid import pte
from prunedroid.checkpoint import Checkpoint
from prunedroid.errors import PrunedroidError
from prunedroid.files import atomic_paths, file_sha256, folder_lock, plain_name, refuse_holding
from prunedroid.options import check, with_options
from prunedroid.probe import mark_runnable
from prunedroid.pruning.cost import count_cost

# TorchScript bytecode version of the .ptl files: v8, what PyTorch 1.12 and 1.13 write themselves, inside what the
# app's org.pytorch:pytorch_android_lite 1.12.2 reads (v4..v9: prunedroid/android.py READABLE_BYTECODE). Newer torch
# builds may write newer bytecode, so exports are backported to v8 when needed.
TARGET_BYTECODE_VERSION = 8
ONNX_OPSET = 17
MAX_ABS_DIFF = 1e-4  # logits, between the eager model and each exported fp32 file
VERIFY_IMAGES = 1000
MAX_INT8_DROP = 1.0  # points of test top-1 an int8 file may lose against fp32 before export refuses it


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


def _write_ptl(model: nn.Module, path: Path, example: torch.Tensor) -> dict:
    """Script (or, for a model TorchScript cannot compile, trace on `example`), freeze, optimise for mobile where this
    torch build can, save for the lite interpreter, and backport the bytecode to TARGET_BYTECODE_VERSION. Returns
    what was done. A trace records one path through forward: the verification that follows is what vouches for it."""
    try:
        scripted, notes = torch.jit.script(model), {"compiled_by": "torch.jit.script"}
    except Exception as err:  # a user's model may use Python TorchScript cannot compile
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings: the file is checked against the eager model anyway
            scripted = torch.jit.trace(model, torch.zeros_like(example[:1]))
        notes = {"compiled_by": f"torch.jit.trace (script failed: {type(err).__name__})"}
    scripted = torch.jit.freeze(scripted)
    try:
        from torch.utils.mobile_optimizer import optimize_for_mobile
        scripted = optimize_for_mobile(scripted)
        notes["optimize_for_mobile"] = "applied"
    except Exception as err:  # e.g. a torch built without XNNPACK, as the CPU wheel this project pins
        # Recorded in the sidecar and printed by `invoke export`, not warned: it is the same on every export here.
        notes["optimize_for_mobile"] = f"unavailable in this torch build ({type(err).__name__}: {str(err)[:120]})"
    # Kept in memory and written by Python, so a full disk is an OSError rather than an abort in torch's C++ writer.
    program = scripted._save_to_buffer_for_lite_interpreter()
    produced = torch.jit.mobile._get_model_bytecode_version(io.BytesIO(program))
    if produced > TARGET_BYTECODE_VERSION:
        program = torch.jit.mobile._backport_for_mobile_to_buffer(io.BytesIO(program), TARGET_BYTECODE_VERSION)
        if not program:
            raise PrunedroidError(f"could not backport TorchScript bytecode {produced} to {TARGET_BYTECODE_VERSION}")
    path.write_bytes(program)
    notes["bytecode_version_produced"] = produced
    notes["bytecode_version"] = torch.jit.mobile._get_model_bytecode_version(str(path))
    return notes


def write_onnx(model: nn.Module, path: Path, dynamic_batch: bool, example: torch.Tensor) -> dict:
    """`model` (N, ...) -> (N, outputs) for inputs shaped as `example` (one input, e.g. (1, 3, 32, 32)) as an ONNX
    file at `path`, checked by onnx's checker; the options used."""
    import onnx

    example = torch.zeros_like(example[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        program = io.BytesIO()  # written by Python below: a full disk is an OSError, not a C++ abort
        torch.onnx.export(model, (example,), program, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None)
    path.write_bytes(program.getvalue())
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return {"opset": ONNX_OPSET, "dynamic_batch": dynamic_batch}


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


def run_lite(path: Path, images: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
    module = torch.jit.mobile._load_for_lite_interpreter(str(path))
    return torch.cat([module(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def run_onnx(path: Path, images: torch.Tensor, dynamic_batch: bool) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    step = 100 if dynamic_batch else 1
    return torch.cat([torch.from_numpy(session.run(None, {"input": images[i:i + step].numpy()})[0])
                      for i in range(0, len(images), step)])


@contextlib.contextmanager
def qnnpack_engine() -> Iterator[None]:
    """ATen's quantized kernels set to QNNPACK, the engine pytorch_android_lite runs int8 on, for the duration: a
    .ptl's packed int8 weights are packed for the engine current when it loads."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "qnnpack"
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def quantize_lite_int8(model: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """`model` (eval mode) statically quantized for PyTorch Mobile (FX graph mode, QNNPACK's default configuration:
    uint8 activations and int8 weights per tensor), observers calibrated on `calibration` inputs ((n, 3, 32, 32)
    normalised images). Call inside qnnpack_engine()."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        try:
            prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("qnnpack"),
                                  (calibration[:1],))
        except Exception as err:  # a user's model FX cannot trace symbolically
            raise PrunedroidError(f"the int8 .ptl needs a model torch.fx can trace ({type(err).__name__}: "
                                  f"{str(err)[:200]}); export without --quantize int8") from None
        with torch.no_grad():
            for batch in calibration.split(64):
                prepared(batch)
        return convert_fx(prepared)


def write_onnx_int8(fp32: Path, path: Path, calibration: torch.Tensor) -> dict:
    """onnxruntime's static quantization of the fp32 ONNX file at `fp32` into `path`: QDQ format, int8 weights per
    output channel, uint8 activations with MinMax ranges from `calibration` (n, 3, 32, 32) normalised images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration.split(1))

        def get_next(self) -> dict | None:
            image = next(self.batches, None)
            return None if image is None else {"input": image.numpy()}

    quantize_static(str(fp32), str(path), Images(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return {"format": "QDQ", "weights": "int8, per output channel", "activations": "uint8, per tensor (MinMax)"}


@dataclass(frozen=True)
class Int8Options:
    """What `--quantize int8` asks for: how many held-out training images calibrate it, and how many points of test
    top-1 it may lose against fp32."""

    calibration_images: int = 512
    max_drop: float = MAX_INT8_DROP

    def __post_init__(self) -> None:
        check([(self.calibration_images >= 1, "--calibration-images must be >= 1"),
               (0 <= self.max_drop <= 100, "--max-drop is in points of top-1, 0..100")], "quantization")

    @classmethod
    def from_options(cls, quantize: str | None, overrides: dict[str, str | None]) -> Int8Options | None:
        """None unless `quantize` is "int8" (None or "none": no int8 files); option strings (None: the default)
        parsed and checked."""
        if quantize in (None, "none"):
            if any(value is not None for value in overrides.values()):
                given = ", ".join("--" + k.replace("_", "-") for k, v in overrides.items() if v is not None)
                raise PrunedroidError(f"{given} given without --quantize int8, the only export it applies to")
            return None
        if quantize != "int8":
            raise PrunedroidError(f"--quantize is int8 or none, got {quantize!r}")
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
    paths = {kind: out_dir / f"{name}.{kind}" for kind in ("ptl", "onnx", "pte")}
    if int8 is not None:
        paths.update(int8_pte=out_dir / f"{name}-int8.pte", int8_onnx=out_dir / f"{name}-int8.onnx",
                     int8_ptl=out_dir / f"{name}-int8.ptl")
    # Last, so it lands after every file it describes; a process killed between two renames leaves files that no
    # longer match the old sidecar's hashes, which every reader checks (prunedroid/sidecar.py).
    paths["sidecar"] = out_dir / f"{name}.json"
    with folder_lock(out_dir), atomic_paths(list(paths.values())) as temporaries:
        # Every file goes to a temporary name and is renamed into place only when all of them have passed.
        tmp = dict(zip(paths, temporaries))
        ptl_notes = _write_ptl(deploy, tmp["ptl"], inputs[:1])
        onnx_notes = write_onnx(deploy, tmp["onnx"], dynamic_batch, inputs[:1])
        executorch_notes = pte.write_pte(deploy, tmp["pte"], inputs[:1])
        with torch.no_grad():
            verification = {"batchnorm_folding": folding,
                            "torchscript_lite": compare(reference, run_lite(tmp["ptl"], inputs), "TorchScript Lite"),
                            "onnx": compare(reference, run_onnx(tmp["onnx"], inputs, dynamic_batch), "ONNX"),
                            "executorch": compare(reference, pte.run_pte(tmp["pte"], inputs), "ExecuTorch")}
        int8_entry = None if int8 is None else int8(deploy, eager, tmp, paths)
        cost = count_cost(model, tuple(inputs.shape[1:]))
        sidecar = {
            "model": name, **(record or {}),
            "ptl": paths["ptl"].name, "onnx": paths["onnx"].name, "pte": paths["pte"].name,
            "input_shape": [1, *inputs.shape[1:]], "macs": cost.macs, "params": cost.params,
            "torchscript": ptl_notes, "onnx_export": onnx_notes, "executorch": executorch_notes,
            **{key: value for kind in ("ptl", "onnx", "pte") for key, value in _size_and_hash(kind, tmp[kind]).items()},
            "int8": int8_entry, "verification": verification,
        }
        tmp["sidecar"].write_text(json.dumps(sidecar, indent=2) + "\n")
    return ExportResult(paths["ptl"], paths["onnx"], paths["sidecar"], sidecar)


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
    executorch_notes = pte.write_pte(pte.quantize_int8(deploy, calibration_images), tmp["int8_pte"],
                                     calibration_images[:1])
    onnx_notes = write_onnx_int8(tmp["onnx"], tmp["int8_onnx"], calibration_images)
    with qnnpack_engine():
        lite_notes = _write_ptl(quantize_lite_int8(deploy, calibration_images), tmp["int8_ptl"],
                                calibration_images[:1])
        with torch.no_grad():
            lite_logits = run_lite(tmp["int8_ptl"], every_test_image)
    logits = {"executorch": pte.run_pte(tmp["int8_pte"], every_test_image),
              "onnxruntime": run_onnx(tmp["int8_onnx"], every_test_image, dynamic_batch=True),
              "torchscript-lite": lite_logits}
    correct = {runtime: values.argmax(1) == test.labels for runtime, values in logits.items()}
    for runtime, int8_correct in correct.items():
        check_int8(fp32_correct, int8_correct, runtime, max_drop)
    fp32_top1 = fp32_correct.float().mean().item()
    measured = {runtime: values.float().mean().item() for runtime, values in correct.items()}
    return {"pte": paths["int8_pte"].name, "onnx": paths["int8_onnx"].name, "ptl": paths["int8_ptl"].name,
            **_size_and_hash("pte", tmp["int8_pte"]), **_size_and_hash("onnx", tmp["int8_onnx"]),
            **_size_and_hash("ptl", tmp["int8_ptl"]), "torchscript": lite_notes,
            "calibration": f"{len(calibration)} held-out training images", "test_images": len(test),
            "fp32_test_top1": fp32_top1, "test_top1": measured, "max_drop_points": max_drop,
            "executorch": executorch_notes, "onnx_quantization": onnx_notes}
