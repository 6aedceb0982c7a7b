"""VGG16 with BatchNorm for 32x32 inputs, described by data so a pruned model rebuilds from its checkpoint alone."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from prunedroid.errors import PrunedroidError
from prunedroid.models.registry import ModelEntry, register_model

# Channels of the 13 conv layers of VGG16 and the conv indices after which a 2x2 max-pool halves the map.
VGG16_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
VGG16_POOL_AFTER = (1, 3, 6, 9, 12)
# Far above any CIFAR VGG (VGG16 has 13 layers of at most 512): a larger description is damaged or hostile, and
# building it would try to allocate without bound.
MAX_LAYERS = 64
MAX_CHANNELS = 16_384


@dataclass(frozen=True)
class VGGSpec:
    """Everything needed to rebuild the network: per-layer widths, not a class name and a multiplier.

    conv_channels: output channels of each 3x3 conv (pruning edits these).
    pool_after: conv indices followed by a 2x2 max-pool; five pools take 32x32 down to 1x1.
    hidden: width of the classifier's hidden layer (Linear -> BN -> ReLU), 0 for a single Linear.
    """

    conv_channels: tuple[int, ...]
    pool_after: tuple[int, ...] = VGG16_POOL_AFTER
    hidden: int = 512
    num_classes: int = 10
    in_channels: int = 3
    name: str = field(default="vgg16_bn")

    def __post_init__(self) -> None:
        counts = (*self.conv_channels, self.hidden, self.num_classes, self.in_channels)
        if not all(type(c) is int for c in (*counts, *self.pool_after)):  # bool is not a width either
            raise PrunedroidError(f"channel counts and pool positions must be whole numbers, got {self.to_dict()}")
        if not 1 <= len(self.conv_channels) <= MAX_LAYERS or min(self.conv_channels) < 1:
            raise PrunedroidError(f"need 1..{MAX_LAYERS} conv layers of at least one channel each, got "
                                  f"{list(self.conv_channels)}")
        if max(counts) > MAX_CHANNELS or min(self.num_classes, self.in_channels) < 1 or self.hidden < 0:
            raise PrunedroidError(f"channel counts must be in 1..{MAX_CHANNELS:,} (hidden may be 0); got conv "
                                  f"{list(self.conv_channels)}, hidden {self.hidden}, classes {self.num_classes}, "
                                  f"input {self.in_channels}: a damaged or foreign architecture description")
        if any(not 0 <= i < len(self.conv_channels) for i in self.pool_after):
            last = len(self.conv_channels) - 1
            raise PrunedroidError(f"pool_after {list(self.pool_after)} names a layer outside 0..{last}")

    def to_dict(self) -> dict:
        spec = asdict(self)
        spec["conv_channels"] = list(self.conv_channels)
        spec["pool_after"] = list(self.pool_after)
        return spec

    @classmethod
    def from_dict(cls, spec: dict) -> VGGSpec:
        try:
            return cls(**{**spec, "conv_channels": tuple(spec["conv_channels"]),
                          "pool_after": tuple(spec["pool_after"])})
        except (KeyError, TypeError) as err:
            raise PrunedroidError(f"not a VGG architecture description ({err}): {str(spec)[:300]}") from err


def vgg16_spec(width: float = 1.0, num_classes: int = 10) -> VGGSpec:
    """VGG16-BN for CIFAR with every layer (classifier hidden included) scaled by `width`."""
    if width <= 0:
        raise PrunedroidError(f"width must be > 0, got {width}")
    scale = lambda c: max(1, round(c * width))
    return VGGSpec(conv_channels=tuple(scale(c) for c in VGG16_CHANNELS), hidden=scale(512), num_classes=num_classes)


class VGG(nn.Module):
    """features: [Conv3x3 -> BN -> ReLU (-> MaxPool)] x 13; classifier: Linear -> BN -> ReLU -> Linear.

    Input (N, 3, 32, 32) normalised images; output (N, num_classes) logits.
    """

    __jit_unused_properties__ = ["spec"]  # a description for Python, not part of the scripted program

    def __init__(self, spec: VGGSpec) -> None:
        super().__init__()
        self.name = spec.name
        layers: list[nn.Module] = []
        in_channels = spec.in_channels
        for index, out_channels in enumerate(spec.conv_channels):
            layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                       nn.ReLU(inplace=True)]
            if index in spec.pool_after:
                layers.append(nn.MaxPool2d(2))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        if spec.hidden:
            self.classifier = nn.Sequential(nn.Linear(in_channels, spec.hidden, bias=False),
                                            nn.BatchNorm1d(spec.hidden),
                                            nn.ReLU(inplace=True), nn.Linear(spec.hidden, spec.num_classes))
        else:
            self.classifier = nn.Sequential(nn.Linear(in_channels, spec.num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def spec(self) -> VGGSpec:
        """The description of the network as its modules now are (pruning narrows them in place)."""
        convs, pool_after = [], []
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                convs.append(module)
            elif isinstance(module, nn.MaxPool2d):
                pool_after.append(len(convs) - 1)
        head = [layer for layer in self.classifier if isinstance(layer, nn.Linear)]
        return VGGSpec(conv_channels=tuple(conv.out_channels for conv in convs), pool_after=tuple(pool_after),
                       hidden=head[0].out_features if len(head) > 1 else 0, num_classes=head[-1].out_features,
                       in_channels=convs[0].in_channels, name=self.name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


register_model(ModelEntry("vgg16", "VGG16-BN", lambda width, classes: VGG(vgg16_spec(width, classes)),
                          "64..512 channels"))
