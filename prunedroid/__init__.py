"""prunedroid: prune whole channels of a CNN and ship the smaller model to an Android app, with honest numbers.

    import prunedroid
    result = prunedroid.prune(model, example_input, method="l1", mac_reduction=0.5)
    prunedroid.export(result.model, example_input, "export", "small")

`prune` is the pruning library's (prunedroid.pruning: torch and its pruning methods only); `export` is the
deployment layer's (prunedroid.deploy.export: ExecuTorch, TorchScript Lite and ONNX, each checked in its runtime).
Both are imported on first use, so `import prunedroid.<module>` stays light.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from torch import nn

    from prunedroid.deploy.export import ExportResult
    from prunedroid.pruning import PruneResult

VERIFY_INPUTS = 64  # random inputs each exported file must reproduce the model's outputs on


def prune(model: nn.Module, example_input: torch.Tensor, method: Any = "l1", **options: Any) -> PruneResult:
    """prunedroid.pruning.prune: the pruned copy (`.model`) and its report (`.report`)."""
    from prunedroid.pruning import prune as prune_channels

    return prune_channels(model, example_input, method, **options)


def export(model: nn.Module, example_input: torch.Tensor, out_dir: str | Path, name: str = "model",
           inputs: torch.Tensor | None = None) -> ExportResult:
    """Writes `name`.pte (ExecuTorch, XNNPACK), `name`.ptl (TorchScript Lite), `name`.onnx and `name`.json into
    `out_dir`, each loaded back in its own runtime and checked against the eager model (max |diff| <= 1e-4, same
    argmax) on `inputs` - default VERIFY_INPUTS seeded standard-normal inputs shaped like `example_input` (pass real,
    normalised ones to check on what the model will see). Nothing is written unless every file passes."""
    import torch

    from prunedroid.deploy.export import export_model

    if inputs is None:
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(VERIFY_INPUTS, *example_input.shape[1:], generator=generator)
    return export_model(model, inputs, out_dir, name)
