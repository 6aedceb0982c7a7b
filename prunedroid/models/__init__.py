"""The models: each registers itself (prunedroid/models/registry.py: a name, a builder taking (width, num_classes),
its input, title and preset changes), all for 32x32 CIFAR images. A checkpoint records a model as `arch`, plain data
that rebuilds it alone:

- VGG16 as its VGGSpec (every layer's width, so a pruned VGG is described layer by layer);
- every other model as a ModelConfig: its name, width and classes, and once pruned the channels each of its channel
  groups keeps. It is rebuilt by building the registered model and cutting each group to that count with the
  pruning library's one surgery (which channels does not matter: the checkpoint's weights replace them).

    model = new_model("resnet56", width=0.5)
    build_model(arch_of(model))   # the same architecture, from its record
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from prunedroid.errors import PrunedroidError
from prunedroid.models.registry import MODELS, ModelEntry, register_model
from prunedroid.models.vgg import VGG, VGG16_CHANNELS, VGGSpec, vgg16_spec
from prunedroid.pruning import Budget, LayerChannels, channel_graph, kept_counts, prune_channels

# Each model registers itself on import, in this order (VGG16 first: the presets' model).
from prunedroid.models import resnet  # noqa: F401  # isort: skip
from prunedroid.models import mobilenetv2  # noqa: F401  # isort: skip

MAX_WIDTH = 4.0  # far above any width trained here; a larger one in a checkpoint is damage, and would not fit memory
MAX_CLASSES = 10_000
MAX_GROUPS = 1_000


@dataclass(frozen=True)
class ModelConfig:
    """A registered model (not VGG16, which VGGSpec describes): name, width multiplier and classes as built, and
    `channels`, the channels each channel group keeps (channel_graph order) once pruned (None: as built)."""

    name: str
    width: float = 1.0
    num_classes: int = 10
    channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.name not in MODELS or self.name == "vgg16":
            raise PrunedroidError(f"unknown model {self.name!r}; choose one of {', '.join(MODELS)}")
        if type(self.width) not in (int, float) or not 0 < self.width <= MAX_WIDTH or not math.isfinite(self.width):
            raise PrunedroidError(f"width must be in (0, {MAX_WIDTH}], got {self.width!r}")
        if type(self.num_classes) is not int or not 1 <= self.num_classes <= MAX_CLASSES:
            raise PrunedroidError(f"num_classes must be a whole number in 1..{MAX_CLASSES}, got {self.num_classes!r}")
        if self.channels is not None and not (len(self.channels) <= MAX_GROUPS and all(
                type(c) is int and c >= 1 for c in self.channels)):
            raise PrunedroidError("channels must list a whole number >= 1 per channel group")

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        return {**record, "channels": None if self.channels is None else list(self.channels)}

    @classmethod
    def from_dict(cls, arch: dict[str, Any]) -> ModelConfig:
        try:
            channels = arch.get("channels")
            return cls(name=arch["name"], width=arch["width"], num_classes=arch["num_classes"],
                       channels=None if channels is None else tuple(channels))
        except (KeyError, TypeError) as err:
            raise PrunedroidError(f"not an architecture description ({err}): {str(arch)[:300]}") from err


def example_input(name: str = "vgg16", device: torch.device | str = "cpu") -> torch.Tensor:
    """A zero input (1, C, H, W) of the registered model `name`'s entry's shape (every model here takes a 32x32 RGB
    image) on `device`: what its channel groups are traced with."""
    return torch.zeros(1, *MODELS[name].input_shape, device=device)


def new_model(name: str, width: float = 1.0, num_classes: int = 10) -> nn.Module:
    """A freshly initialised registered model (uses torch's global RNG for the initial weights)."""
    if name == "vgg16":
        return VGG(vgg16_spec(width, num_classes))
    config = ModelConfig(name, width, num_classes)
    model = MODELS[name].build(width, num_classes)
    # What arch_of reads back; TorchScript leaves an attribute forward never reads alone.
    model.config = config  # type: ignore[assignment]  # nn.Module's __setattr__ is typed for tensors and modules
    return model


def fresh_arch(name: str, width: float = 1.0, num_classes: int = 10) -> dict[str, Any]:
    """The record of a registered model as built (nothing pruned), without building it."""
    if name == "vgg16":
        return vgg16_spec(width, num_classes).to_dict()
    return ModelConfig(name, width, num_classes).to_dict()


def is_vgg(arch: dict[str, Any] | VGGSpec | ModelConfig) -> bool:
    """Whether `arch` describes a VGG (its layer list) rather than a registered model's ModelConfig."""
    return isinstance(arch, VGGSpec) or (isinstance(arch, dict) and "conv_channels" in arch)


def build_model(arch: dict[str, Any] | VGGSpec | ModelConfig) -> nn.Module:
    """The model `arch` (a checkpoint's record, a VGGSpec or a ModelConfig) describes, freshly initialised."""
    if isinstance(arch, VGGSpec):
        return VGG(arch)
    if isinstance(arch, dict) and is_vgg(arch):
        return VGG(VGGSpec.from_dict(arch))
    config = ModelConfig.from_dict(arch) if isinstance(arch, dict) else arch
    model = new_model(config.name, config.width, config.num_classes)
    if config.channels is None:
        return model
    example = example_input(config.name, next(model.parameters()).device)
    counts = kept_counts(channel_graph(model, example), Budget(LayerChannels(config.channels)))
    pruned = prune_channels(model, example, {group: list(range(kept)) for group, kept in enumerate(counts)})
    pruned.config = config  # type: ignore[assignment]
    return pruned


def arch_of(model: nn.Module) -> dict[str, Any]:
    """The record that rebuilds `model`'s architecture (build_model): its VGGSpec, or its ModelConfig with the
    channels each group keeps now."""
    if isinstance(model, VGG):
        return model.spec.to_dict()
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise PrunedroidError(f"a {type(model).__name__} is not a registered model (prunedroid.models.MODELS): "
                              f"only those can be saved as a checkpoint; export it with prunedroid.export instead")
    example = example_input(config.name, next(model.parameters()).device)
    channels = channel_graph(model, example).channels
    return ModelConfig(config.name, config.width, config.num_classes, tuple(channels)).to_dict()


__all__ = ["MODELS", "VGG", "VGG16_CHANNELS", "ModelConfig", "ModelEntry", "VGGSpec", "arch_of", "build_model",
           "example_input", "register_model",
           "fresh_arch", "new_model", "vgg16_spec"]
