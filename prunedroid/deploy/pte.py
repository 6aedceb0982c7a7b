"""ExecuTorch programs (.pte): a model exported with torch.export, its operators delegated to XNNPACK - the CPU
kernels ExecuTorch runs on phones - in fp32 or int8, and the ExecuTorch runtime that runs them. The runtime here
executes the same XNNPACK kernels a phone does (x86 instead of ARM code paths), so a check on this host runs the
program the app will load, not a simulation of it.

int8 is PyTorch's PT2E flow: XNNPACKQuantizer's symmetric config (int8 weights per output channel, int8
activations per tensor), observers calibrated on real images, then converted and lowered like the fp32 graph.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

DELEGATE = "XnnpackBackend"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ExecuTorch and torchao announce optional kernels they cannot load (CUDA ones, on a CPU build) and deprecations
    on import and export; none of it concerns the CPU program written here."""
    pytree = logging.getLogger("torch.utils._pytree")  # a deprecation torchao triggers on import
    level = pytree.level
    pytree.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        pytree.setLevel(level)


def version() -> str:
    from executorch.version import __version__

    return __version__


def quantize_int8(model: nn.Module, calibration: torch.Tensor) -> nn.Module:
    """`model` (eval mode) with int8 quantize/dequantize pairs around every conv and linear, observers calibrated on
    `calibration` inputs as the model takes them ((n, 3, 32, 32) normalised images), one at a time (the program's
    static batch)."""
    with _quiet():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        graph = torch.export.export(model, (torch.zeros_like(calibration[:1]),)).module()
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for image in calibration.split(1):
                prepared(image)
        return convert_pt2e(prepared)


def write_pte(model: nn.Module, path: Path, example: torch.Tensor) -> dict:
    """Lowers `model` (eval mode, fp32 or quantize_int8's output) for inputs shaped as `example` (one input, e.g.
    (1, 3, 32, 32)) to XNNPACK and writes the ExecuTorch program to `path`. Returns the version, delegate and how
    much of the graph was delegated."""
    with _quiet():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.devtools.backend_debug import get_delegation_info
        from executorch.exir import to_edge_transform_and_lower

        lowered = to_edge_transform_and_lower(torch.export.export(model, (torch.zeros_like(example[:1]),)),
                                              partitioner=[XnnpackPartitioner()])
        info = get_delegation_info(lowered.exported_program().graph_module)
        path.write_bytes(lowered.to_executorch().buffer)
    # getitem only unpacks a delegate's outputs: it is bookkeeping, not an operator left to the portable kernels.
    outside = sum(row.non_delegated for name, row in info.delegation_by_operator.items() if name != "getitem")
    return {"version": version(), "delegate": DELEGATE, "delegated_subgraphs": info.num_delegated_subgraphs,
            "delegated_operators": info.num_delegated_nodes, "operators_outside": outside,
            "delegated_fraction": info.num_delegated_nodes / max(1, info.num_delegated_nodes + outside)}


def load_pte(path: Path):  # -> executorch.runtime.Method (imported lazily)
    """The program's forward method, loaded by the ExecuTorch runtime (input: one (1, 3, 32, 32) image)."""
    with _quiet():
        from executorch.runtime import Runtime

        return Runtime.get().load_program(str(path)).load_method("forward")


_pool_threads: list[int] = []  # the size the pool was last reset to in this process


def set_threads(threads: int) -> None:
    """Threads of the runtime's XNNPACK thread pool (process-wide), as on a phone's core(s). Call it before loading
    programs: resetting the pool under a loaded XNNPACK program corrupts the heap (seen as an abort), so a size
    already set is left alone."""
    if _pool_threads == [threads]:
        return
    with _quiet():
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(threads)
    _pool_threads[:] = [threads]


def predictor(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The .pte at `path`, loaded once, as (N, 3, 32, 32) normalised images -> (N, classes) logits, one image per
    call (the program's input is a single image)."""
    method = load_pte(path)
    return lambda images: torch.cat([method.execute([image.contiguous()])[0] for image in images.split(1)])


def run_pte(path: Path, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, 32, 32) normalised images -> (N, classes) logits from the .pte at `path`."""
    return predictor(path)(images)
