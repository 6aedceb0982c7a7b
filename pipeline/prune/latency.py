"""Measured latency per layer shape: the cost `--allocation latency` trims by (NetAdapt's lookup table).

A VGG's batch-1 latency is predicted as the sum of its layers' latencies, each layer measured alone in onnxruntime
(one thread, BatchNorm folded into the conv as export does) the first time its shape is needed, then kept in a JSON
table that later prunes on the same machine reuse. A sum of layers misses what a whole network shares (caches warm
between layers, one session's overhead per call), which is why the frontier benchmark times the final models whole.
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

from pipeline.bench import interleaved_latencies_ms, onnx_session
from pipeline.errors import PipelineError
from pipeline.export import ONNX_OPSET
from pipeline.files import atomic_path, read_json
from pipeline.models import VGGSpec
from pipeline.options import is_finite_number
from pipeline.report import machine_info

RUNTIME = "onnxruntime"
RUNS = 60  # timed runs per shape, after WARMUP; the median is kept
WARMUP = 10
MAX_LAYER_MS = 60_000.0  # a layer slower than a minute is no measurement of this table's


def is_latency(ms: object) -> bool:
    """A usable table entry: a finite number in (0, MAX_LAYER_MS] (a zero or negative one would divide by zero or
    steer the search to nonsense; NaN compares false with every target)."""
    return is_finite_number(ms) and 0 < ms <= MAX_LAYER_MS  # type: ignore[operator]


@dataclass(frozen=True)
class LayerShape:
    """One layer as the runtime runs it: a 3x3 conv (bias: BatchNorm folded) -> ReLU (-> 2x2 max-pool) from
    `inputs` to `outputs` channels on a size x size map; or, with size 0, the classifier: `inputs` features ->
    Linear -> ReLU -> Linear to `outputs` classes through `hidden` units (hidden 0: one Linear)."""

    inputs: int
    outputs: int
    size: int
    pooled: bool = False
    hidden: int = 0

    @property
    def key(self) -> str:
        if self.size == 0:
            return f"classifier {self.inputs}->{self.hidden}->{self.outputs}"
        return f"conv {self.inputs}x{self.size}x{self.size}->{self.outputs}" + (" pool" if self.pooled else "")

    def block(self) -> tuple[nn.Module, torch.Tensor]:
        """The layer as a module with fresh weights (a dense kernel's time does not depend on them) and a zero
        batch-1 input of its shape."""
        if self.size == 0:
            layers = ([nn.Linear(self.inputs, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.outputs)]
                      if self.hidden else [nn.Linear(self.inputs, self.outputs)])
            return nn.Sequential(*layers).eval(), torch.zeros(1, self.inputs)
        layers = [nn.Conv2d(self.inputs, self.outputs, 3, padding=1), nn.ReLU()] + [nn.MaxPool2d(2)] * self.pooled
        return nn.Sequential(*layers).eval(), torch.zeros(1, self.inputs, self.size, self.size)


def layer_shapes(spec: VGGSpec, channels: Sequence[int], image_size: int = 32) -> list[LayerShape]:
    """The shapes of `spec` with conv layers of `channels` channels: one per conv layer, then the classifier."""
    shapes, size, inputs = [], image_size, spec.in_channels
    for index, outputs in enumerate(channels):
        pooled = index in spec.pool_after
        shapes.append(LayerShape(inputs, outputs, size, pooled))
        size, inputs = (size // 2 if pooled else size), outputs
    return shapes + [LayerShape(inputs * size * size, spec.num_classes, 0, hidden=spec.hidden)]


def measure_ms(shape: LayerShape) -> float:
    """Median batch-1 latency (ms) of one layer shape in onnxruntime, one thread."""
    block, example = shape.block()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "layer.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
            torch.onnx.export(block, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["input"], output_names=["output"])
        session = onnx_session(path, threads=1)
    feed = {"input": np.zeros(tuple(example.shape), dtype=np.float32)}
    timing = interleaved_latencies_ms({0: functools.partial(session.run, None, feed)}, WARMUP, RUNS, rounds=1)
    return timing[0]["median"]


def _where() -> dict:
    """What a table's numbers depend on besides the shapes: the runtime, its version and threads, and the CPU."""
    import onnxruntime

    return {"runtime": f"{RUNTIME} {onnxruntime.__version__}", "threads": 1, "cpu": machine_info()["cpu"]}


@dataclass
class LatencyTable:
    """Measured ms per layer shape (LayerShape.key -> ms), filled on first use of a shape; `save` keeps it in
    `path` (JSON) for the next prune on this machine."""

    path: Path | None = None
    measure: Callable[[LayerShape], float] = measure_ms
    ms: dict[str, float] = field(default_factory=dict)
    where: dict = field(default_factory=dict)
    measured: int = 0  # shapes measured (not read from the file) since loading

    @classmethod
    def load(cls, path: Path | None, measure: Callable[[LayerShape], float] = measure_ms) -> LatencyTable:
        """The table kept at `path` (a new one when absent); one measured elsewhere (another CPU or runtime
        version) is refused, since its numbers would steer the search wrongly."""
        where = _where()
        if path is None or not path.exists():
            return cls(path, measure, where=where)
        stored = read_json(path, "a latency table")
        table = stored.get("ms") if isinstance(stored, dict) else None
        if not isinstance(table, dict) or not all(is_latency(v) for v in table.values()):
            raise PipelineError(f"{path} is not a latency table of layer shapes to milliseconds (each finite and in "
                                f"(0, {MAX_LAYER_MS:.0f}] ms); delete it to measure a new one")
        ms = {str(key): float(value) for key, value in table.items()}
        if stored.get("where") != where:
            raise PipelineError(f"the latency table {path} was measured with "
                                f"{json.dumps(stored.get('where'))[:300]}, but this prune runs with {where}; delete it "
                                f"and it is measured again here")
        return cls(path, measure, ms, where)

    def layer_ms(self, shape: LayerShape) -> float:
        if shape.key not in self.ms:
            measured = self.measure(shape)
            if not is_latency(measured):
                raise PipelineError(f"measuring {shape.key} gave {measured} ms, not a latency in "
                                    f"(0, {MAX_LAYER_MS:.0f}]")
            self.ms[shape.key] = measured
            self.measured += 1
        return self.ms[shape.key]

    def model_ms(self, spec: VGGSpec, channels: Sequence[int]) -> float:
        """Predicted batch-1 latency (ms) of `spec` with conv layers of `channels` channels: its layers' sum."""
        return sum(self.layer_ms(shape) for shape in layer_shapes(spec, channels))

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps({"where": self.where, "ms": self.ms}, indent=1, sort_keys=True) + "\n")
