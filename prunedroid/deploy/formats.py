"""The file formats a model is exported to, one registry entry each (FORMATS): how a model is written to the file,
how the file's own runtime loads it as a predictor, what its first bytes are and, where it has one, its int8 flavour.
Export, the sidecar's schema, the probe of a file from outside and the host benchmark iterate the registry, so a new
format is one `register_format(ModelFormat(...))` (and, if the phone is to run it, a Runner in the app).

    .ptl   TorchScript Lite: PyTorch Mobile's lite interpreter (the app's lite build)
    .onnx  ONNX: onnxruntime
    .pte   ExecuTorch with XNNPACK (the app's default build; prunedroid/deploy/pte.py)

Each runtime is imported when a file of it is first written or loaded, so importing this module (the sidecar's
checks do) costs no torch.
"""
from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prunedroid.errors import PrunedroidError

if TYPE_CHECKING:
    import torch
    from torch import nn

Predictor = Callable[["torch.Tensor"], "torch.Tensor"]  # (N, C, H, W) normalised images -> (N, classes) logits

# TorchScript bytecode version of the .ptl files: v8, what PyTorch 1.12 and 1.13 write themselves, inside what the
# app's org.pytorch:pytorch_android_lite 1.12.2 reads (v4..v9: prunedroid/android/build.py READABLE_BYTECODE). Newer
# torch builds may write newer bytecode, so exports are backported to v8 when needed.
TARGET_BYTECODE_VERSION = 8
ONNX_OPSET = 17
BATCH = 100  # images per call when a predictor runs a whole set (predict)


@dataclass(frozen=True)
class ModelFormat:
    """One file format and the runtime that runs it.

    kind: the file's suffix and the sidecar's key for it ("pte"); runtime: the name its results go by - benchmark
    rows, int8 checks ("executorch"); title: for messages ("ExecuTorch"); check: the sidecar's verification entry;
    notes / int8_notes: the sidecar's entries for what the writer did.
    write(model, path, example, dynamic_batch) -> notes: a BatchNorm-folded eval model to `path`, for inputs shaped
    as `example` (1, C, H, W); dynamic_batch: the file should take any batch size, where the format can.
    load(path, threads) -> predictor taking any batch size (threads None: the runtime's default).
    magic(first 8 bytes) -> whether they are this format's (None: the format has no signature).
    write_int8(model, path, calibration, fp32_path) -> notes: the int8 file, its ranges set on `calibration` (n, C,
    H, W) held-out images; fp32_path: this format's fp32 file of the same model, already written.
    required / int8_required: every sidecar (every int8 entry) names one: False for a format added later, so earlier
    exports still read."""

    kind: str
    runtime: str
    title: str
    check: str
    notes: str
    write: Callable[[nn.Module, Path, torch.Tensor, bool], dict]
    load: Callable[[Path, int | None], Predictor]
    magic: Callable[[bytes], bool] | None = None
    write_int8: Callable[[nn.Module, Path, torch.Tensor, Path], dict] | None = None
    int8_notes: str = ""
    required: bool = False
    int8_required: bool = False

    @property
    def int8_runtime(self) -> str:
        """The benchmark's name for the int8 file's runtime."""
        return f"{self.runtime}-int8"


FORMATS: dict[str, ModelFormat] = {}  # kind -> format, in the order files are written, checked and listed


def register_format(entry: ModelFormat) -> ModelFormat:
    FORMATS[entry.kind] = entry
    return entry


def format_of(path: Path) -> ModelFormat:
    """The registered format of a file, by its suffix."""
    entry = FORMATS.get(path.suffix[1:])
    if entry is None:
        raise PrunedroidError(f"{path} is not a model file of a known format ({', '.join('.' + k for k in FORMATS)})")
    return entry


def int8_formats() -> list[ModelFormat]:
    return [entry for entry in FORMATS.values() if entry.write_int8 is not None]


def predict(predictor: Predictor, images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images -> (N, classes) logits, BATCH images per call."""
    import torch

    with torch.no_grad():
        return torch.cat([predictor(images[start:start + BATCH]) for start in range(0, len(images), BATCH)])


def run(path: Path, images: torch.Tensor) -> torch.Tensor:
    """The logits of the model file at `path` on `images`, in its runtime."""
    return predict(format_of(path).load(path, None), images)


@contextlib.contextmanager
def qnnpack_engine() -> Iterator[None]:
    """ATen's quantized kernels set to QNNPACK, the engine pytorch_android_lite runs int8 on, for the duration: a
    .ptl's packed int8 weights are packed for the engine current when it loads."""
    import torch

    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "qnnpack"
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def write_ptl(model: nn.Module, path: Path, example: torch.Tensor, dynamic_batch: bool = True) -> dict:
    """Script (or, for a model TorchScript cannot compile, trace on `example`), freeze, optimise for mobile where this
    torch build can, save for the lite interpreter, and backport the bytecode to TARGET_BYTECODE_VERSION. Returns
    what was done. A trace records one path through forward: the verification that follows is what vouches for it.
    A .ptl takes any batch size either way."""
    import torch
    import torch.jit.mobile

    try:
        scripted = torch.jit.script(model)
        notes: dict[str, object] = {"compiled_by": "torch.jit.script"}
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


def quantize_lite_int8(model: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """`model` (eval mode) statically quantized for PyTorch Mobile (FX graph mode, QNNPACK's default configuration:
    uint8 activations and int8 weights per tensor), observers calibrated on `calibration` inputs ((n, 3, 32, 32)
    normalised images). Call inside qnnpack_engine()."""
    import torch
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


def write_ptl_int8(model: nn.Module, path: Path, calibration: torch.Tensor, fp32_path: Path) -> dict:
    with qnnpack_engine():
        return write_ptl(quantize_lite_int8(model, calibration), path, calibration[:1])


def load_ptl(path: Path, threads: int | None) -> Predictor:
    """Threads: torch's intra-op setting, process-wide (the caller's torch.set_num_threads)."""
    import torch.jit.mobile

    with qnnpack_engine():  # int8 weights are packed at load for the engine the phone uses; the caller's stays
        module = torch.jit.mobile._load_for_lite_interpreter(str(path))
    return lambda images: module(images)


def write_onnx(model: nn.Module, path: Path, example: torch.Tensor, dynamic_batch: bool = True) -> dict:
    """`model` (N, ...) -> (N, outputs) for inputs shaped as `example` (one input, e.g. (1, 3, 32, 32)) as an ONNX
    file at `path`, checked by onnx's checker; the options used."""
    import onnx
    import torch

    example = torch.zeros_like(example[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        program = io.BytesIO()  # written by Python below: a full disk is an OSError, not a C++ abort
        torch.onnx.export(model, (example,), program,  # type: ignore[arg-type]  # it takes a file object too
                          dynamo=False, opset_version=ONNX_OPSET, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None)
    path.write_bytes(program.getvalue())
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return {"opset": ONNX_OPSET, "dynamic_batch": dynamic_batch}


def write_onnx_int8(model: nn.Module, path: Path, calibration: torch.Tensor, fp32_path: Path) -> dict:
    """onnxruntime's static quantization of the fp32 ONNX file at `fp32_path` into `path`: QDQ format, int8 weights
    per output channel, uint8 activations with MinMax ranges from `calibration` (n, 3, 32, 32) normalised images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration.split(1))

        def get_next(self) -> dict | None:
            image = next(self.batches, None)
            return None if image is None else {"input": image.numpy()}

    quantize_static(str(fp32_path), str(path), Images(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return {"format": "QDQ", "weights": "int8, per output channel", "activations": "uint8, per tensor (MinMax)"}


def onnx_session(path: Path, threads: int | None):  # -> onnxruntime.InferenceSession (imported lazily)
    """A CPU session; with `threads`, that many intra-op threads and no inter-op parallelism, as on a phone's core."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_onnx(path: Path, threads: int | None) -> Predictor:
    """A file exported with a fixed batch (of 1) is fed one image at a time."""
    import torch

    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) else None

    def run_batch(images: torch.Tensor) -> torch.Tensor:
        if step is None or len(images) == step:  # one call, nothing added to what is timed
            return torch.from_numpy(session.run(None, {name: images.numpy()})[0])
        return torch.cat([run_batch(chunk) for chunk in images.split(step)])

    return run_batch


def write_pte(model: nn.Module, path: Path, example: torch.Tensor, dynamic_batch: bool = True) -> dict:
    """A .pte takes one image per call (its program is traced at batch 1), whatever `dynamic_batch` says."""
    from prunedroid.deploy import pte

    return pte.write_pte(model, path, example)


def write_pte_int8(model: nn.Module, path: Path, calibration: torch.Tensor, fp32_path: Path) -> dict:
    from prunedroid.deploy import pte

    return pte.write_pte(pte.quantize_int8(model, calibration), path, calibration[:1])


def load_pte(path: Path, threads: int | None) -> Predictor:
    """Threads: the XNNPACK pool's size, process-wide and set before the first program loads (pte.set_threads)."""
    from prunedroid.deploy import pte

    if threads is not None:
        pte.set_threads(threads)
    return pte.predictor(path)


register_format(ModelFormat(
    kind="ptl", runtime="torchscript-lite", title="TorchScript Lite", check="torchscript_lite", notes="torchscript",
    write=write_ptl, load=load_ptl, magic=lambda head: head[:4] == b"PK\x03\x04",  # a zip archive
    write_int8=write_ptl_int8, int8_notes="torchscript", required=True))
register_format(ModelFormat(
    kind="onnx", runtime="onnxruntime", title="ONNX", check="onnx", notes="onnx_export", write=write_onnx,
    load=load_onnx, magic=None,  # protobuf has no signature: the probe's run is its check
    write_int8=write_onnx_int8, int8_notes="onnx_quantization", required=True, int8_required=True))
register_format(ModelFormat(
    kind="pte", runtime="executorch", title="ExecuTorch", check="executorch", notes="executorch", write=write_pte,
    load=load_pte, magic=lambda head: len(head) >= 8 and head[4:6] == b"ET" and head[6:8].isdigit(),  # flatbuffer id
    write_int8=write_pte_int8, int8_notes="executorch", int8_required=True))
