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
import itertools
import json
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunedroid.deploy import pte
from prunedroid.deploy.formats import ONNX_OPSET, onnx_session
from prunedroid.errors import PrunedroidError
from prunedroid.files import atomic_path, read_json
from prunedroid.measure.bench import interleaved_latencies_ms
from prunedroid.measure.report import machine_info
from prunedroid.models import build_model, example_input
from prunedroid.options import check, is_finite_number, option
from prunedroid.pruning.allocation import reachable_counts
from prunedroid.pruning.budget import Budget
from prunedroid.pruning.groups import ChannelGraph, LayerShape, channel_graph

RUNS = 60  # timed runs per shape, after WARMUP; the median is kept
WARMUP = 10
MAX_LAYER_MS = 60_000.0  # a layer slower than a minute is no measurement of this table's
CALIBRATION_INPUTS = 4  # random inputs an int8 layer's activation observers see (its speed does not depend on them)


def is_latency(ms: object) -> bool:
    """A usable table entry: a finite number in (0, MAX_LAYER_MS] (a zero or negative one would divide by zero or
    steer the search to nonsense; NaN compares false with every target)."""
    return is_finite_number(ms) and 0 < ms <= MAX_LAYER_MS  # type: ignore[operator]


def layer_block(shape: LayerShape, image_input: bool = False) -> tuple[nn.Module, torch.Tensor]:
    """The layer as a module with fresh weights (a dense kernel's time does not depend on them) and a zero batch-1
    input of its shape. image_input: a Linear reads a (1, C, 1, 1) map through a Flatten (a view), as the app's
    benchmark hands every program an image-shaped input."""
    if shape.size == 0:
        linear = nn.Linear(shape.inputs, shape.outputs).eval()
        if image_input:
            return nn.Sequential(nn.Flatten(), linear).eval(), torch.zeros(1, shape.inputs, 1, 1)
        return linear, torch.zeros(1, shape.inputs)
    conv = nn.Conv2d(shape.inputs, shape.outputs, shape.kernel, shape.stride, shape.padding, groups=shape.groups)
    return conv.eval(), torch.zeros(1, shape.inputs, shape.size, shape.size)


def write_layer_pte(shape: LayerShape, path: Path, int8: bool = False) -> torch.Tensor:
    """One layer shape as an ExecuTorch program delegated to XNNPACK at `path` (int8: weights per output channel,
    activations per tensor, as `export --quantize int8` writes the model); returns its zero (1, C, H, W) input."""
    block, example = layer_block(shape, image_input=True)
    write_timing_pte(block, example, path, int8)
    return example


def write_timing_pte(model: nn.Module, example: torch.Tensor, path: Path, int8: bool = False) -> None:
    """`model` (eval, fresh weights) as an XNNPACK program at `path` for timing only: int8 observers calibrated on
    random inputs shaped as `example`, since the kernels' speed does not depend on the values."""
    if int8:
        generator = torch.Generator().manual_seed(0)
        model = pte.quantize_int8(model, torch.rand((CALIBRATION_INPUTS, *example.shape[1:]), generator=generator))
    pte.write_pte(model, path, example)


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
    """Median batch-1 latency (ms) of one layer shape in ExecuTorch with XNNPACK (write_layer_pte), one thread."""
    pte.set_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "layer.pte"
        example = write_layer_pte(shape, path, int8)
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


def read_table(path: Path) -> tuple[dict[str, float], dict]:
    """(ms per shape key, where it was measured) of the table at `path`, checked."""
    stored = read_json(path, "a latency table")
    table = stored.get("ms") if isinstance(stored, dict) else None
    if not isinstance(table, dict) or not all(is_latency(v) for v in table.values()) \
            or not isinstance(stored.get("where"), dict):
        raise PrunedroidError(f"{path} is not a latency table of layer shapes to milliseconds (each finite and in "
                              f"(0, {MAX_LAYER_MS:.0f}] ms); delete it to measure a new one")
    return {str(key): float(value) for key, value in table.items()}, stored["where"]


def write_table(path: Path, where: dict, ms: dict[str, float]) -> None:
    """The table at `path` as one atomic write (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"where": where, "ms": ms}, indent=1, sort_keys=True) + "\n")


def reachable_shapes(graph: ChannelGraph, budget: Budget) -> list[LayerShape]:
    """Every layer shape a search under `budget` can time (the grid a table measured ahead must hold): each layer at
    every combination of the counts its input and output groups can reach."""
    grid = reachable_counts(graph, budget)
    shapes = {}
    for layer in graph.layers:
        varied = layer.varied
        for values in itertools.product(*(grid[group] for group in varied)):
            counts = list(graph.channels)
            for group, value in zip(varied, values):
                counts[group] = value
            shape = layer.shape_at(counts)
            shapes[shape.key] = shape
    return list(shapes.values())


def model_shapes(arch: dict, round_to: str | int | None = None,
                 min_keep: str | float | None = None) -> tuple[list[LayerShape], Budget]:
    """Every layer shape a latency prune of the model `arch` (a checkpoint's record) can reach with this step and
    floor (the target does not change the grid), and the budget that says so (its round_to and min_keep as used)."""
    budget = Budget.of(latency_reduction=0.5, allocation="latency", round_to=round_to, min_keep=min_keep)
    return reachable_shapes(channel_graph(build_model(arch), example_input()), budget), budget


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
        ms, stored_where = read_table(path)
        if stored_where != where:
            raise PrunedroidError(f"the latency table {path} was measured with {json.dumps(stored_where)[:300]}, but "
                                  f"this prune runs with {where}; delete it and it is measured again here")
        return cls(path, measure, ms, where)

    @classmethod
    def from_device(cls, path: Path) -> LatencyTable:
        """A table measured on a phone (`invoke latency-table --device`), used as it is: a shape it lacks cannot be
        timed here, so asking for one is an error naming the fix."""
        ms, where = read_table(path)
        if not isinstance(where.get("device"), dict):
            raise PrunedroidError(f"{path} was not measured on a device (no device in its record): give it with "
                                  f"--latency-runtime's table folder, or measure one with `invoke latency-table "
                                  f"--device`")

        def missing(shape: LayerShape) -> float:
            raise PrunedroidError(f"the phone's latency table {path} has no timing for {shape.key}: it was measured "
                                  f"for another model, --round-to or --min-keep; measure this prune's grid with "
                                  f"`invoke latency-table --device` and the same options (it resumes into the table)")

        return cls(None, missing, ms, where)

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
        if self.path is not None:
            write_table(self.path, self.where, self.ms)

    def fill(self, shapes: Sequence[LayerShape]) -> None:
        """Times every one of `shapes` not yet in the table; what was timed is saved even when one fails, so a
        rerun resumes."""
        try:
            for shape in shapes:
                self.layer_ms(shape)
        finally:
            self.save()


@dataclass(frozen=True)
class LatencyOptions:
    """Which runtime `--allocation latency` times its layers in; the table is kept per runtime beside the output."""

    latency_runtime: str = option(APP_RUNTIME, "runtime whose per-layer latencies --allocation latency trims by, "
                                                "measured on this machine: executorch (XNNPACK fp32, what the app "
                                                "runs), executorch-int8 or onnxruntime")
    latency_table: str | None = option(None, "a latency table measured on the phone by `invoke latency-table "
                                             "--device`, used as it is instead of timing layers here")

    def __post_init__(self) -> None:
        check([(self.latency_runtime in RUNTIMES,
                f"--latency-runtime is one of {', '.join(RUNTIMES)}, not {self.latency_runtime!r}")], "latency")

    def table_path(self, folder: Path) -> Path:
        """This machine's table for the runtime, kept in `folder` (beside a prune's output folder)."""
        return folder / f"latency-table-{self.latency_runtime}.json"

    def table(self, folder: Path | None) -> LatencyTable:
        """The phone's table when one is given, else this machine's for the runtime, kept in `folder` (None: a new
        one, not kept)."""
        if self.latency_table:
            return LatencyTable.from_device(Path(self.latency_table))
        return LatencyTable.load(None if folder is None else self.table_path(folder), self.latency_runtime)


APP_LATENCY = LatencyOptions()  # the app's runtime (frozen: safe as every function's default)
