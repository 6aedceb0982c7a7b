"""Channel groups: the channels of a traced CNN that must be cut together, and what each group's width costs.

Torch-Pruning's dependency graph (Fang et al., DepGraph, CVPR 2023) follows a conv's output channels through the
network: the BatchNorm over them, every layer that reads them, a residual addition that ties them to another
producer's channels, a depthwise conv that carries them from its input to its output, a flatten that spreads each over
several input features of a Linear. One group is one such set, and pruning keeps the same channel indices in every
tensor of it. Nothing here knows a model's name: a VGG, a ResNet or a user's own CNN all take this path.

A concatenation puts a group's channels after other channels in what a consumer reads: each consumer records the
offset at which the group's channel 0 arrives, so scores, folds and costs read the group's own positions.

A group is prunable when its channels are produced by ungrouped convs and read by at least one layer, each channel in
its own place. It stays whole, with the reason recorded, when its output is the model's output (nothing to fold
into), when a grouped (not depthwise) conv produces or reads it (cutting it would need the same channels cut in every
convolution group), when a layer with parameters the library does not cut (GroupNorm, LayerNorm) normalises it, or
when its channels reach a layer reordered (a channel shuffle) or only partly (a conv whose output is split).
"""
from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from prunedroid.errors import PrunedroidError


@dataclass(frozen=True)
class Consumer:
    """A layer reading a group's channels as its input: `module` (a Conv2d or a Linear), reading `repeat` input
    features per channel (a Linear after flattening an H x W map reads H*W per channel, channel-major). The group's
    channel c is the layer's input channel `offset` + c (features (offset + c) * repeat ...): a concatenation in
    front of it puts `offset` other channels first."""

    module: str
    repeat: int = 1
    offset: int = 0

    def channels(self, count: int) -> slice:
        """The layer's input channels that are the group's (`count` of them)."""
        return slice(self.offset, self.offset + count)


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
    def depthwise(self) -> bool:
        return 1 < self.groups == self.inputs == self.outputs

    @property
    def key(self) -> str:
        if self.size == 0:
            return f"linear {self.inputs}->{self.outputs}"
        group = f" g{self.groups}" if self.groups > 1 else ""
        return (f"conv {self.inputs}x{self.size}x{self.size}->{self.outputs} k{self.kernel} s{self.stride} "
                f"p{self.padding}{group}")


@dataclass(frozen=True)
class Read:
    """A layer's input channels that one group sets: `repeat` input features per channel of group `group`."""

    group: int
    repeat: int = 1


@dataclass(frozen=True)
class Layer:
    """One call of a Conv2d or Linear of the model (a module called twice is two Layers) and which groups set its
    widths. out_group: the group its output channels belong to (None: fixed); reads: the groups its input is made of
    (several behind a concatenation; a depthwise conv reads its own output group), the rest of its input (`fixed`
    channels or features) comes from channels left whole; positions: output values per output channel for one input
    (H_out*W_out; 1 for a Linear on a vector); shape: its LayerShape at full width; kernel_area: kernel height x
    width (1 for a Linear); untimed: why a latency table cannot time it ("" when it can: LayerShape describes square
    kernels, strides, paddings and maps only)."""

    module: str
    out_group: int | None
    reads: tuple[Read, ...]
    fixed: int
    positions: int
    shape: LayerShape
    kernel_area: int = 1
    untimed: str = ""

    @property
    def varied(self) -> tuple[int, ...]:
        """The groups that set its widths, each once."""
        out = () if self.out_group is None else (self.out_group,)
        return tuple(dict.fromkeys((*(read.group for read in self.reads), *out)))

    def width(self, counts: Sequence[int]) -> tuple[int, int]:
        """(input, output) channels with `counts` channels per group."""
        outputs = self.shape.outputs if self.out_group is None else counts[self.out_group]
        if self.shape.depthwise:  # one input channel per output channel
            return outputs, outputs
        return self.fixed + sum(counts[read.group] * read.repeat for read in self.reads), outputs

    def macs(self, counts: Sequence[int]) -> int:
        inputs, outputs = self.width(counts)
        groups = outputs if self.shape.depthwise else self.shape.groups
        return self.positions * outputs * inputs // groups * self.kernel_area

    def shape_at(self, counts: Sequence[int]) -> LayerShape:
        """Its LayerShape with `counts` channels per group, for a latency table (refused for a layer it cannot
        time)."""
        if self.untimed:
            raise PrunedroidError(f"{self.module}: {self.untimed}, which a latency table cannot time; prune to a MAC "
                                  f"budget instead")
        inputs, outputs = self.width(counts)
        groups = outputs if self.shape.depthwise else self.shape.groups
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

    @property
    def whole_note(self) -> str:
        """For an error about what a budget can reach: "; N convs are left whole (the first reason ...)", or ""."""
        if not self.left_whole:
            return ""
        convs = sum(len(whole.producers) for whole in self.left_whole)
        first = self.left_whole[0]
        others = len(self.left_whole) - 1
        more = f"; {others} more groups in the report's left_whole" if others else ""
        return (f"; {convs} conv{'s' if convs > 1 else ''} {'are' if convs > 1 else 'is'} left whole and cannot "
                f"shrink ({', '.join(first.producers)}: {first.reason}{more})")

    def at(self, group: ChannelGroup, counts: Sequence[int]) -> ChannelGroup:
        """`group` as a model whose groups keep `counts` channels reads it (methods that cut group by group): each
        consumer's offset moved back by the channels cut from the groups concatenated before it."""
        shift = lambda consumer: sum(other.channels - counts[other.index] for other in self.groups
                                     for earlier in other.consumers
                                     if earlier.module == consumer.module and earlier.offset < consumer.offset)
        return dataclasses.replace(group, consumers=tuple(dataclasses.replace(c, offset=c.offset - shift(c))
                                                          for c in group.consumers))

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
        if "index_mapping" in traceback.extract_tb(err.__traceback__)[-1].filename:
            raise PrunedroidError(f"Torch-Pruning's dependency graph cannot follow this model's channels through a "
                                  f"reshape that splits them into groups (a channel shuffle, as in ShuffleNet: "
                                  f"{type(err).__name__}: {err}), so no channel group can be found; prune a model "
                                  f"without one, or leave the reshape out of the traced forward") from None
        raise PrunedroidError(f"could not trace the model on the example input of shape "
                              f"{tuple(example_input.shape)} to find its channel groups: {err}") from err
    finally:
        model.train(was_training)


def _group_members(model: nn.Module, graph: Any,
                   conv: nn.Conv2d) -> tuple[list[str], list[str], list[Consumer], set[str]]:
    """(producers, norms, consumers, reasons to leave it whole) of the group `conv`'s output channels start. Every
    member's channels are checked against the group's own: a producer makes all of them in their order, a consumer
    reads each in one place per read (Consumer.offset); anything else is a reason to leave the group whole."""
    import torch_pruning as tp

    names = {module: name for name, module in model.named_modules()}
    producers: list[str] = []
    norms: list[str] = []
    consumers: list[Consumer] = []
    foreign: set[str] = set()
    channels = conv.out_channels
    try:
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(channels)))
    except Exception as err:  # Torch-Pruning's index mapping fails on some reshapes (a channel shuffle)
        foreign.add(f"an operation Torch-Pruning cannot follow the channels through ({type(err).__name__}: {err})")
        return [names[conv]], norms, consumers, foreign
    for item in group.items:
        module, handler = item.dep.target.module, item.dep.handler
        if module not in names:  # Torch-Pruning's own nodes for additions, reshapes and activations
            continue
        name, by_root = names[module], _positions(item.idxs, item.root_idxs, channels)
        cuts_outputs = handler.__name__.endswith("out_channels")
        if isinstance(module, nn.Conv2d) and (cuts_outputs or _is_depthwise(module)):
            producers.append(name)
            if module.out_channels != channels or by_root != [[c] for c in range(channels)]:
                foreign.add(f"{name} (only part of its output, or its output reordered)")
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and not cuts_outputs:
            reads = _reads(name, by_root, isinstance(module, nn.Linear))
            consumers.extend(reads)
            if not reads:
                foreign.add(f"{name} (reads them through a reshape that splits or reorders channels)")
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            norms.append(name)
        elif any(True for _ in module.parameters(recurse=False)) or isinstance(module, nn.Linear):
            foreign.add(f"{name} ({type(module).__name__})")
    if any(_is_grouped(model.get_submodule(name)) for name in [*producers, *(c.module for c in consumers)]):
        foreign.add("a grouped convolution")
    return producers, norms, consumers, foreign


def _positions(indices: Sequence[int], roots: Sequence[int] | None, channels: int) -> list[list[int]]:
    """Per channel of the group (Torch-Pruning's root index), the member's sorted positions it maps to."""
    by_root: list[list[int]] = [[] for _ in range(channels)]
    for index, root in zip(indices, roots if roots is not None else indices):
        if 0 <= root < channels:
            by_root[root].append(int(index))
    return [sorted(positions) for positions in by_root]


def _reads(module: str, by_root: list[list[int]], linear: bool) -> list[Consumer]:
    """The Consumers `module` is, one per place it reads the group (`by_root`: per group channel, the layer's input
    positions), or none when the positions are not each channel in its own place at a fixed offset. A Linear's
    positions come in runs of `repeat` features per channel (a flattened map); a conv's one per read."""
    first = by_root[0]
    if not first:
        return []
    runs = [index for index, position in enumerate(first) if index == 0 or position != first[index - 1] + 1]
    repeat = len(first) // len(runs) if linear else 1
    if linear and (len(first) % len(runs) or any(first[at] % repeat for at in runs)):
        return []
    offsets = [first[at] // repeat for at in runs] if linear else first
    if any(positions != sorted((offset + channel) * repeat + feature for offset in offsets for feature in range(repeat))
           for channel, positions in enumerate(by_root)):
        return []
    return [Consumer(module, repeat, offset) for offset in offsets]


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
            named = sorted(foreign)
            listed = ", ".join(named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3 else "")
            reason = (f"read or normalised by {listed}, which the library does not cut" if foreign
                      else "not read by any layer (the model's output)")
            left_whole.append(WholeGroup(tuple(producers), reason))
            continue
        groups.append(ChannelGroup(len(groups), module.out_channels, tuple(producers), tuple(sorted(set(norms))),
                                   tuple(sorted(set(consumers), key=lambda c: (order[c.module], c.offset)))))
    return groups, left_whole


def _layers(model: nn.Module, example_input: torch.Tensor, groups: Sequence[ChannelGroup]) -> list[Layer]:
    """Every call of a Conv2d or Linear, in call order, with the groups setting its widths and its output
    positions."""
    out_group = {name: group.index for group in groups for name in group.producers}
    reads: dict[str, list[tuple[Read, int]]] = {}  # module -> (what it reads, that group's channels)
    for group in groups:
        for consumer in group.consumers:
            reads.setdefault(consumer.module, []).append((Read(group.index, consumer.repeat), group.channels))
    calls: list[tuple[str, tuple[int, int], int]] = []  # (module, input map (H, W), output positions), per call

    def record(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                size, width = (inputs[0].shape[-2], inputs[0].shape[-1]), module.out_channels
            else:
                size, width = (0, 0), cast(nn.Linear, module).out_features
            calls.append((name, size, output.numel() // output.shape[0] // width))
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
    return [_layer(name, modules[name], size, positions, out_group.get(name), reads.get(name, []))
            for name, size, positions in calls]


def _layer(name: str, module: nn.Module, size: tuple[int, int], positions: int, out_group: int | None,
           reads: list[tuple[Read, int]]) -> Layer:
    """The Layer of one call: `size` is its input map's (height, width) ((0, 0) for a Linear)."""
    untimed = ""
    if isinstance(module, nn.Conv2d):
        uneven = [f"its {what} is {value!r}" for what, value in (("kernel", module.kernel_size), ("stride",
                  module.stride), ("padding", module.padding), ("input map", size))
                  if not isinstance(value, tuple) or len(set(value)) != 1]
        untimed = ", ".join(uneven) + " (not square)" if uneven else ""
        kernel = module.kernel_size
        shape = LayerShape(module.in_channels, module.out_channels, size[1], kernel[0], module.stride[0],
                           module.padding[0] if isinstance(module.padding, tuple) else 0, module.groups)
        area = kernel[0] * kernel[1]
    else:
        shape, area = LayerShape(cast(nn.Linear, module).in_features, cast(nn.Linear, module).out_features), 1
        out_group = None
    if shape.depthwise:
        return Layer(name, out_group, () if out_group is None else (Read(out_group),), 0, positions, shape, area,
                     untimed)
    fixed = shape.inputs - sum(channels * read.repeat for read, channels in reads)
    return Layer(name, out_group, tuple(read for read, _ in reads), fixed, positions, shape, area, untimed)
