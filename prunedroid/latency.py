"""Measured latency per layer shape: the cost `--allocation latency` trims by (NetAdapt's lookup table).

A model's batch-1 latency is predicted as the sum of its Conv2d and Linear layers' latencies (the shapes the channel
graph gives for any channel counts), each layer measured alone (one thread; a conv with a bias, as export folds
BatchNorm into it) in the runtime the model will run in - onnxruntime, or ExecuTorch with XNNPACK in fp32 or int8, the
app's runtime - the first time its shape is needed, then kept in a JSON table that later prunes on the same machine
reuse. A table measured on a phone (`invoke latency-table --device`) is read as it is: nothing can be added to it here.
A sum of layers misses what a whole network shares (activations, pooling, caches warm between layers, one call's
overhead), which is why benchmarks time the final models whole.
"""
from __future__ import annotations

import functools
import json
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunedroid import pte
from prunedroid.bench import interleaved_latencies_ms, onnx_session
from prunedroid.deploy import ONNX_OPSET
from prunedroid.errors import PrunedroidError
from prunedroid.files import atomic_path, read_json
from prunedroid.options import check, is_finite_number, option
from prunedroid.pruning.groups import ChannelGraph, LayerShape
from prunedroid.report import machine_info

RUNS = 60  # timed runs per shape, after WARMUP; the median is kept
WARMUP = 10
MAX_LAYER_MS = 60_000.0  # a layer slower than a minute is no measurement of this table's
CALIBRATION_INPUTS = 4  # random inputs an int8 layer's activation observers see (its speed does not depend on them)


def is_latency(ms: object) -> bool:
    """A usable table entry: a finite number in (0, MAX_LAYER_MS] (a zero or negative one would divide by zero or
    steer the search to nonsense; NaN compares false with every target)."""
    return is_finite_number(ms) and 0 < ms <= MAX_LAYER_MS  # type: ignore[operator]


def layer_block(shape: LayerShape) -> tuple[nn.Module, torch.Tensor]:
    """The layer as a module with fresh weights (a dense kernel's time does not depend on them) and a zero batch-1
    input of its shape."""
    if shape.size == 0:
        return nn.Linear(shape.inputs, shape.outputs).eval(), torch.zeros(1, shape.inputs)
    conv = nn.Conv2d(shape.inputs, shape.outputs, shape.kernel, shape.stride, shape.padding, groups=shape.groups)
    return conv.eval(), torch.zeros(1, shape.inputs, shape.size, shape.size)


def _median_ms(call: Callable[[], object]) -> float:
    return interleaved_latencies_ms({0: call}, WARMUP, RUNS, rounds=1)[0]["median"]


def onnx_layer_ms(shape: LayerShape) -> float:
    """Median batch-1 latency (ms) of one layer shape in onnxruntime, one thread."""
    block, example = layer_block(shape)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "layer.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
            torch.onnx.export(block, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["input"], output_names=["output"])
        session = onnx_session(path, threads=1)
    feed = {"input": np.zeros(tuple(example.shape), dtype=np.float32)}
    return _median_ms(functools.partial(session.run, None, feed))


def executorch_layer_ms(shape: LayerShape, int8: bool = False) -> float:
    """Median batch-1 latency (ms) of one layer shape as an ExecuTorch program delegated to XNNPACK (int8: weights
    per output channel, activations per tensor, as `export --quantize int8` writes the model), one thread."""
    block, example = layer_block(shape)
    if int8:
        generator = torch.Generator().manual_seed(0)
        block = pte.quantize_int8(block, torch.rand((CALIBRATION_INPUTS, *example.shape[1:]), generator=generator))
    pte.set_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "layer.pte"
        pte.write_pte(block, path, example)
        method = pte.load_pte(path)
    return _median_ms(functools.partial(method.execute, [example]))


def _onnxruntime_version() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


@dataclass(frozen=True)
class Runtime:
    """A runtime a table is measured in: what times one layer shape (ms), and its version as the table records it."""

    layer_ms: Callable[[LayerShape], float]
    version: Callable[[], str]


RUNTIMES = {
    "onnxruntime": Runtime(onnx_layer_ms, _onnxruntime_version),
    "executorch": Runtime(executorch_layer_ms, lambda: f"executorch {pte.version()} (XNNPACK, fp32)"),
    "executorch-int8": Runtime(functools.partial(executorch_layer_ms, int8=True),
                               lambda: f"executorch {pte.version()} (XNNPACK, int8)"),
}


APP_RUNTIME = "executorch"  # what the app runs an fp32 .pte in


def where_measured(runtime: str) -> dict:
    """What a table's numbers depend on besides the shapes: the runtime, its version and threads, and the CPU."""
    return {"runtime": RUNTIMES[runtime].version(), "threads": 1, "cpu": machine_info()["cpu"]}


@dataclass
class LatencyTable:
    """Measured ms per layer shape (LayerShape.key -> ms) in one runtime, filled on first use of a shape; `save`
    keeps it in `path` (JSON) for the next prune on this machine."""

    path: Path | None = None
    measure: Callable[[LayerShape], float] = onnx_layer_ms
    ms: dict[str, float] = field(default_factory=dict)
    where: dict = field(default_factory=dict)
    measured: int = 0  # shapes measured (not read from the file) since loading

    @classmethod
    def load(cls, path: Path | None, runtime: str = "onnxruntime",
             measure: Callable[[LayerShape], float] | None = None) -> LatencyTable:
        """The table of `runtime` kept at `path` (a new one when absent); one measured elsewhere (another runtime,
        version or CPU) is refused, since its numbers would steer the search wrongly. measure: shape -> ms in place
        of the runtime's own timing (tests)."""
        where = where_measured(runtime)
        measure = measure or RUNTIMES[runtime].layer_ms
        if path is None or not path.exists():
            return cls(path, measure, where=where)
        stored = read_json(path, "a latency table")
        table = stored.get("ms") if isinstance(stored, dict) else None
        if not isinstance(table, dict) or not all(is_latency(v) for v in table.values()):
            raise PrunedroidError(f"{path} is not a latency table of layer shapes to milliseconds (each finite and in "
                                  f"(0, {MAX_LAYER_MS:.0f}] ms); delete it to measure a new one")
        ms = {str(key): float(value) for key, value in table.items()}
        if stored.get("where") != where:
            raise PrunedroidError(f"the latency table {path} was measured with "
                                  f"{json.dumps(stored.get('where'))[:300]}, but this prune runs with {where}; delete "
                                  f"it and it is measured again here")
        return cls(path, measure, ms, where)

    def layer_ms(self, shape: LayerShape) -> float:
        if shape.key not in self.ms:
            measured = self.measure(shape)
            if not is_latency(measured):
                raise PrunedroidError(f"measuring {shape.key} gave {measured} ms, not a latency in "
                                    f"(0, {MAX_LAYER_MS:.0f}]")
            self.ms[shape.key] = measured
            self.measured += 1
        return self.ms[shape.key]

    def model_ms(self, graph: ChannelGraph, counts: Sequence[int]) -> float:
        """Predicted batch-1 latency (ms) of the model `graph` describes with `counts` channels per group: its
        layers' sum."""
        return sum(self.layer_ms(shape) for shape in graph.layer_shapes(counts))

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps({"where": self.where, "ms": self.ms}, indent=1, sort_keys=True) + "\n")


@dataclass(frozen=True)
class LatencyOptions:
    """Which runtime `--allocation latency` times its layers in; the table is kept per runtime beside the output."""

    latency_runtime: str = option(APP_RUNTIME, "runtime whose per-layer latencies --allocation latency trims by, "
                                                "measured on this machine: executorch (XNNPACK fp32, what the app "
                                                "runs), executorch-int8 or onnxruntime")

    def __post_init__(self) -> None:
        check([(self.latency_runtime in RUNTIMES,
                f"--latency-runtime is one of {', '.join(RUNTIMES)}, not {self.latency_runtime!r}")], "latency")

    def table_path(self, folder: Path) -> Path:
        """This machine's table for the runtime, kept in `folder` (beside a prune's output folder)."""
        return folder / f"latency-table-{self.latency_runtime}.json"


APP_LATENCY = LatencyOptions()  # the app's runtime (frozen: safe as every function's default)
