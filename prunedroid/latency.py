"""Measured latency per layer shape: the cost `--allocation latency` trims by (NetAdapt's lookup table).

A model's batch-1 latency is predicted as the sum of its Conv2d and Linear layers' latencies (the shapes the channel
graph gives for any channel counts), each layer measured alone in onnxruntime (one thread; a conv with a bias, as
export folds BatchNorm into it) the first time its shape is needed, then kept in a JSON table that later prunes on the
same machine reuse. A sum of layers misses what a whole network shares (activations, pooling, caches warm between
layers, one session's overhead per call), which is why the frontier benchmark times the final models whole.
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

from prunedroid.bench import interleaved_latencies_ms, onnx_session
from prunedroid.deploy import ONNX_OPSET
from prunedroid.errors import PrunedroidError
from prunedroid.files import atomic_path, read_json
from prunedroid.options import is_finite_number
from prunedroid.pruning.groups import ChannelGraph, LayerShape
from prunedroid.report import machine_info

RUNTIME = "onnxruntime"
RUNS = 60  # timed runs per shape, after WARMUP; the median is kept
WARMUP = 10
MAX_LAYER_MS = 60_000.0  # a layer slower than a minute is no measurement of this table's


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


def measure_ms(shape: LayerShape) -> float:
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
