"""The model registry: one ModelEntry per architecture, registered by the file that defines the model (timm-style),
so a new model is that file and one import in prunedroid/models/__init__.py. The entry carries what the rest of the
project asks of a model: how to build it at a width, its input, its title in reports, and what each training preset
changes for it."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prunedroid.data import IMAGE_SHAPE

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """name: how it is asked for (`--model NAME`); title: for reports ("ResNet-56"); build(width, num_classes) -> a
    freshly initialised model; widths: what width 1.0 means, for the help ("16..64 channels"); input_shape: (C, H, W)
    it classifies; presets: training preset -> the recipe fields it changes for this model (the presets are
    VGG16's)."""

    name: str
    title: str
    build: Callable[[float, int], nn.Module]
    widths: str
    input_shape: tuple[int, int, int] = IMAGE_SHAPE
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


MODELS: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    MODELS[entry.name] = entry
    return entry


def width_help() -> str:
    """The `width` option's help, naming what 1.0 means for every registered model."""
    return "width multiplier of every layer (1.0: " + ", ".join(
        f"{entry.title}'s {entry.widths}" for entry in MODELS.values()) + ")"
