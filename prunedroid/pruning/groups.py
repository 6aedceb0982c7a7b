"""Channel groups: the channels of a traced CNN that must be cut together, and what each group's width costs.

Torch-Pruning's dependency graph (Fang et al., DepGraph, CVPR 2023) follows a conv's output channels through the
network: the BatchNorm over them, every layer that reads them, a residual addition that ties them to another
producer's channels, a depthwise conv that carries them from its input to its output, a flatten that spreads each over
several input features of a Linear. One group is one such set, and pruning keeps the same channel indices in every
tensor of it. Nothing here knows a model's name: a VGG, a ResNet or a user's own CNN all take this path.

A group is prunable when its channels are produced by an ungrouped conv and read by at least one layer: a conv whose
output is the model's output has nothing to fold into, and grouped (not depthwise) convs would need whole groups of
channels cut at once, which no budget here counts in; both stay whole.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from prunedroid.errors import PrunedroidError


@dataclass(frozen=True)
class Consumer:
    """A layer reading a group's channels as its input: `module` (a Conv2d or a Linear), reading `repeat` input
    features per channel (a Linear after flattening an H x W map reads H*W per channel, channel-major)."""

    module: str
    repeat: int = 1


@dataclass(frozen=True)
class WholeGroup:
    """Channels the library leaves whole: the convs producing them, and why (what reads or normalises them that the
    library does not cut, or that nothing reads them)."""

    producers: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class ChannelGroup:
    """index: position among the model's prunable groups, in module order; channels: how many there are now.
    producers: the convs whose output channels these are (the first creates them; a residual addition adds more, a
    depthwise conv carries them on); norms: the BatchNorms over them; consumers: the layers that read them."""

    index: int
    channels: int
    producers: tuple[str, ...]
    norms: tuple[str, ...]
    consumers: tuple[Consumer, ...]

    @property
    def leader(self) -> str:
        """The first producer: the conv whose output channels name the group."""
        return self.producers[0]


@dataclass(frozen=True)
class LayerShape:
    """One Conv2d or Linear as a runtime runs it at batch 1: `inputs` -> `outputs` channels (features for a Linear),
    on a `size` x `size` input map (0 for a Linear), with its kernel, stride, padding and groups (groups ==
    inputs == outputs: depthwise)."""

    inputs: int
    outputs: int
    size: int = 0
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1

    @property
    def key(self) -> str:
        if self.size == 0:
            return f"linear {self.inputs}->{self.outputs}"
        group = f" g{self.groups}" if self.groups > 1 else ""
        return (f"conv {self.inputs}x{self.size}x{self.size}->{self.outputs} k{self.kernel} s{self.stride} "
                f"p{self.padding}{group}")


@dataclass(frozen=True)
class Layer:
    """A Conv2d or Linear of the model and which groups set its widths (None: fixed).
    out_group: the group its output channels belong to; in_group: the group it reads (a depthwise conv's input is
    its own output group); positions: output values per output channel for one input (H_out*W_out; 1 for a
    Linear on a vector); shape: its LayerShape at full width."""

    module: str
    out_group: int | None
    in_group: int | None
    repeat: int
    positions: int
    shape: LayerShape

    def width(self, counts: Sequence[int]) -> tuple[int, int]:
        """(input, output) channels with `counts` channels per group."""
        outputs = self.shape.outputs if self.out_group is None else counts[self.out_group]
        if self.shape.groups > 1:  # depthwise: one input channel per output channel
            return outputs, outputs
        inputs = self.shape.inputs if self.in_group is None else counts[self.in_group] * self.repeat
        return inputs, outputs

    def macs(self, counts: Sequence[int]) -> int:
        inputs, outputs = self.width(counts)
        per_output = (1 if self.shape.groups > 1 else inputs) * self.shape.kernel ** 2
        return self.positions * outputs * per_output

    def shape_at(self, counts: Sequence[int]) -> LayerShape:
        inputs, outputs = self.width(counts)
        groups = outputs if self.shape.groups > 1 else 1
        return LayerShape(inputs, outputs, self.shape.size, self.shape.kernel, self.shape.stride, self.shape.padding,
                          groups)


@dataclass(frozen=True)
class ChannelGraph:
    """A model's prunable channel groups and its Conv2d/Linear layers: MACs and layer shapes for any channel counts
    per group, without building the pruned model (budget searches ask thousands of times)."""

    groups: tuple[ChannelGroup, ...]
    layers: tuple[Layer, ...]
    left_whole: tuple[WholeGroup, ...] = ()

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels per group now (what a budget prunes)."""
        return tuple(group.channels for group in self.groups)

    def macs(self, counts: Sequence[int] | None = None) -> int:
        """Multiply-accumulates of one input (Conv2d and Linear; as cost.count_cost counts) with `counts` channels
        per group (default: as the model is)."""
        counts = self.channels if counts is None else counts
        return sum(layer.macs(counts) for layer in self.layers)

    def mac_reduction(self, counts: Sequence[int]) -> float:
        """Fraction of the model's MACs removed when its groups keep `counts` channels."""
        return 1 - self.macs(counts) / self.macs()

    def layer_shapes(self, counts: Sequence[int] | None = None) -> list[LayerShape]:
        counts = self.channels if counts is None else counts
        return [layer.shape_at(counts) for layer in self.layers]


def conv_named(model: nn.Module, name: str) -> nn.Conv2d:
    """The Conv2d at `name` (a group's producer)."""
    module = model.get_submodule(name)
    if not isinstance(module, nn.Conv2d):
        raise PrunedroidError(f"{name} is a {type(module).__name__}, not the Conv2d the channel groups were traced on")
    return module


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels == \
        module.out_channels


def _is_grouped(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and not _is_depthwise(module)


def dependency_graph(model: nn.Module, example_input: torch.Tensor) -> Any:
    """Torch-Pruning's dependency graph of `model` traced on `example_input` (a batch of one is enough)."""
    import torch_pruning as tp

    was_training = model.training
    try:
        with torch.enable_grad():  # Torch-Pruning traces through autograd, even when called under no_grad
            return tp.DependencyGraph().build_dependency(model.eval(), example_inputs=example_input)
    except Exception as err:  # tracing runs the user's forward: any failure there is theirs to see, in one line
        raise PrunedroidError(f"could not trace the model on the example input of shape "
                              f"{tuple(example_input.shape)} to find its channel groups: {err}") from err
    finally:
        model.train(was_training)


def _group_members(model: nn.Module, graph: Any, conv: nn.Conv2d) -> tuple[list, list, list, set]:
    """(producers, norms, consumers, other parameterised modules) of the group `conv`'s output channels start."""
    import torch_pruning as tp

    names = {module: name for name, module in model.named_modules()}
    producers, norms, consumers, foreign = [], [], [], set()
    group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
    for dependency, indices in group:
        module, handler = dependency.target.module, dependency.handler
        if module not in names:  # Torch-Pruning's own nodes for additions, reshapes and activations
            continue
        cuts_outputs = handler.__name__.endswith("out_channels")
        if isinstance(module, nn.Conv2d) and (cuts_outputs or _is_depthwise(module)):
            producers.append(names[module])
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and not cuts_outputs:
            consumers.append(Consumer(names[module], len(indices) // conv.out_channels))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            norms.append(names[module])
        elif any(True for _ in module.parameters(recurse=False)) or isinstance(module, nn.Linear):
            foreign.add(f"{names[module]} ({type(module).__name__})")
    if _is_grouped(conv) or any(_is_grouped(model.get_submodule(c.module)) for c in consumers):
        foreign.add("a grouped convolution")
    return producers, norms, consumers, foreign


def channel_graph(model: nn.Module, example_input: torch.Tensor) -> ChannelGraph:
    """The prunable groups of `model` (any nn.Module of Conv2d, Linear, BatchNorm and parameter-free operations) and
    its layers' costs, traced on `example_input`, e.g. (1, 3, 32, 32)."""
    groups, left_whole = _classified_groups(model, dependency_graph(model, example_input))
    return ChannelGraph(tuple(groups), tuple(_layers(model, example_input, groups)), tuple(left_whole))


def channel_groups(model: nn.Module, dependencies: Any) -> list[ChannelGroup]:
    """The prunable groups in `dependencies` (dependency_graph(model, ...)), ordered by their first producer's place
    in model.modules(); a group that cannot be pruned (see the module docstring) is left out."""
    return _classified_groups(model, dependencies)[0]


def _classified_groups(model: nn.Module, dependencies: Any) -> tuple[list[ChannelGroup], list[WholeGroup]]:
    """(the prunable groups, in channel_groups' order; the groups left whole, with the reason)."""
    order = {name: index for index, (name, _) in enumerate(model.named_modules())}
    groups: list[ChannelGroup] = []
    left_whole: list[WholeGroup] = []
    seen: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d) or _is_depthwise(module) or name in seen:
            continue
        producers, norms, consumers, foreign = _group_members(model, dependencies, module)
        seen.update(producers)
        producers.sort(key=order.__getitem__)
        if not consumers or foreign:
            reason = (f"read or normalised by {', '.join(sorted(foreign))}, which the library does not cut" if foreign
                      else "not read by any layer (the model's output)")
            left_whole.append(WholeGroup(tuple(producers), reason))
            continue
        groups.append(ChannelGroup(len(groups), module.out_channels, tuple(producers), tuple(sorted(norms)),
                                   tuple(sorted(set(consumers), key=lambda c: order[c.module]))))
    return groups, left_whole


def _layers(model: nn.Module, example_input: torch.Tensor, groups: Sequence[ChannelGroup]) -> list[Layer]:
    """Every Conv2d and Linear in call order, with the group setting each width and its output positions."""
    out_group = {name: group.index for group in groups for name in group.producers}
    in_group = {c.module: (group.index, c.repeat) for group in groups for c in group.consumers}
    seen: dict[str, tuple[int, int, int]] = {}  # module -> (input size, output positions, first call)

    def record(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if name not in seen:
                if isinstance(module, nn.Conv2d):
                    size, width = inputs[0].shape[-1], module.out_channels
                else:
                    size, width = 0, cast(nn.Linear, module).out_features
                seen[name] = (size, output.numel() // output.shape[0] // width, len(seen))
        return hook

    modules = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    hooks = [module.register_forward_hook(record(name)) for name, module in modules.items()]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example_input[:1])
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    layers = []
    for name in sorted(seen, key=lambda n: seen[n][2]):
        module, (size, positions, _) = modules[name], seen[name]
        if isinstance(module, nn.Conv2d):
            if len(set(module.kernel_size)) != 1 or len(set(module.stride)) != 1 or not isinstance(
                    module.padding, tuple) or len(set(module.padding)) != 1:
                raise PrunedroidError(f"{name}: only square kernels, strides and paddings are supported, got "
                                      f"{module}")
            shape = LayerShape(module.in_channels, module.out_channels, size, module.kernel_size[0],
                               module.stride[0], module.padding[0], module.groups)
        else:
            shape = LayerShape(module.in_features, module.out_features)
        group, repeat = in_group.get(name, (None, 1))
        if _is_depthwise(module):
            group, repeat = out_group.get(name), 1
        layers.append(Layer(name, out_group.get(name) if not isinstance(module, nn.Linear) else None, group,
                            repeat, positions, shape))
    return layers
