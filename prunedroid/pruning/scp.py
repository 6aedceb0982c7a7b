"""Similarity-aware channel pruning (SCP; Zhang et al., "Learning Compact Networks via Similarity-Aware Channel
Pruning", MIPR 2020): two channels whose feature maps are nearly the same carry the same information, so one goes,
and the next layer reads the survivor in its place (weight combination), rebuilding its output with fewer channels.

Group by group, as the paper goes layer by layer: the maps a group's consumers read are computed on the calibration
inputs by the network already pruned before the group, similar channel pairs are found among k nearest neighbours,
each pair's *pruning loss* (the consumers' output error if one of the two goes) decides which one goes, and the
removed channel's weights are folded into its twin in every consumer. Where consumers read different maps of one
group (a residual stream read before and after an addition), a channel's map is all of them side by side and the loss
is summed over consumers. One group's maps are held at a time (n x C x H x W floats: 268 MB for 1,024 images at
VGG16's widest layer); each group costs a forward pass up to its last consumer.

Three measured additions to the paper, each an option (benchmarks/archive/results/scp_quick.md compares them):
- rank "loss": under a budget, the KNN pairs whose removal is estimated to cost least go first, rather than the most
  similar ones - similarity alone ignores how much a channel contributes; "similarity" is the paper's order.
- recalibrate: after a layer is cut and folded, the next layer's BatchNorm statistics are re-measured on the
  evaluation maps, so its normalised output keeps the mean and variance the rest of the network was trained on.
- keep "norm": of a pair, the filter with the larger L1 norm stays and the pruning loss only picks and orders the
  pairs, as magnitude methods - which fine-tune well - would choose. Neither rule wins everywhere, before or after
  fine-tuning (also benchmarks/results/compare_*.md), so the paper's, "loss", is the default.

Pruning loss, exactly and cheaply: removing channel r in favour of t with factor a changes the consumer's output by
conv(W[:, r], a z_t - z_r), linear in the maps. Over the evaluation set its squared norm is
a^2 tr(A P_tt) - 2a tr(A P_rt) + tr(A P_rr), with A = W_r^T W_r (kernel x kernel, summed over output channels) and
P_xy the (kernel x kernel) correlations of the two channels' 3x3 patches - one small matrix product per pair instead
of a forward pass per candidate. The least-squares factor a = tr(A P_rt) / tr(A P_tt) minimises it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from prunedroid.errors import PrunedroidError
from prunedroid.options import check, option
from prunedroid.pruning.budget import Budget, kept_counts
from prunedroid.pruning.groups import ChannelGraph, ChannelGroup, Consumer
from prunedroid.pruning.l1 import group_l1
from prunedroid.pruning.method import Calibration, PruningMethod, inputs_of
from prunedroid.pruning.similarity import CRITERIA, Pair, SimilarityAccumulator, channel_similarity, ranked_pairs
from prunedroid.pruning.surgery import Cutter, Merge, consumer_weight, fold_channels

# How a removed channel's next-layer weights are folded into its twin: "lstsq" scales them by the factor that
# minimises the pruning loss, "sum" adds them as they are (the paper), "none" drops them (pruning without combination).
COMBINE = ("lstsq", "sum", "none")
RANKS = ("loss", "similarity")
# Which of a similar pair stays: the one whose removal would cost more (the paper's pruning loss), or the one with the
# larger filter (L1 norm), as magnitude methods would keep it.
KEEPS = ("loss", "norm")
# Where the pruning loss is measured: the consumer conv's raw output, or after its BatchNorm.
LOSS_AT = ("conv", "bn")


@dataclass(frozen=True)
class SCPConfig(PruningMethod):
    """SCP's options (see the module docstring); prunes to exactly one of `threshold` and a budget."""

    name: ClassVar[str] = "scp"
    summary: ClassVar[str] = "similarity-aware channel pruning, Zhang et al. 2020"
    criterion: str = option("cosine", "feature-map similarity: cosine, euclidean, manhattan or chebyshev")
    knn: int = option(3, "nearest neighbours per channel in the similarity matrix")
    threshold: float | None = option(None, "prune every pair more similar than this, in [0, 1], instead of a "
                                           "budget")
    combine: str = option("lstsq", "weight combination: lstsq (the least-squares factor), sum (the paper) or none")
    rank: str = option("loss", "with a budget, which pairs go first: loss (the cheapest estimated pruning loss) or "
                               "similarity (the most similar, the paper)")
    loss_at: str = option("conv", "measure the pruning loss at the consumers' output (conv) or after their "
                                  "BatchNorm (bn)")
    keep: str = option("loss", "which of a similar pair stays: the costlier to remove by pruning loss (loss) or "
                               "the larger filter by L1 norm (norm)")
    recalibrate: bool = option(True, "re-measure the BatchNorm after each consumer on the calibration maps once a "
                                     "group is cut")
    eval_images: int = option(1024, "held-out training images analysed")
    batch_size: int = option(256, "images per forward pass")

    def __post_init__(self) -> None:
        checks = [(self.criterion in CRITERIA, f"unknown criterion {self.criterion!r}; choose one of "
                                               f"{', '.join(CRITERIA)}"),
                  (self.knn >= 1, f"k (nearest neighbours) must be >= 1, got {self.knn}"),
                  (self.threshold is None or 0 <= self.threshold <= 1,
                   f"threshold must be in [0, 1] (a similarity), got {self.threshold}"),
                  (self.combine in COMBINE, f"unknown weight combination {self.combine!r}; choose one of "
                                            f"{', '.join(COMBINE)}"),
                  (self.rank in RANKS, f"unknown pair ranking {self.rank!r}; choose one of {', '.join(RANKS)}"),
                  (self.loss_at in LOSS_AT, f"unknown loss_at {self.loss_at!r}; choose one of "
                                            f"{', '.join(LOSS_AT)}"),
                  (self.keep in KEEPS, f"unknown keep rule {self.keep!r}; choose one of {', '.join(KEEPS)}"),
                  (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
                  (self.eval_images >= self.batch_size,
                   f"the evaluation set ({self.eval_images} images) is smaller than one batch ({self.batch_size}); "
                   f"use more evaluation images or a smaller batch")]
        check(checks, "SCP")

    @property
    def data_images(self) -> int:
        return self.eval_images

    def resolve_budget(self, budget: Budget | None, default: Budget | None) -> Budget | None:
        """The budget SCP prunes to: none in threshold mode (a budget is then an error), else the one given or the
        caller's default; one of the two must decide how many channels go."""
        if self.threshold is not None:
            if budget is not None:
                raise PrunedroidError("give either `threshold` or a budget (`mac_reduction`, `ratio`, `layer_ratios`), "
                                      "not both")
            return None
        if budget is None and default is None:
            raise PrunedroidError("SCP needs exactly one of `threshold` (prune pairs above it) or a budget "
                                  "(`mac_reduction`, `ratio` or `layer_ratios`)")
        return budget or default

    def scores(self, model: nn.Module, graph: ChannelGraph, example_input: torch.Tensor, seed: int,
               calibration: Calibration | None) -> list[torch.Tensor]:
        return redundancy_scores(model, graph, self, inputs_of(calibration, self.name))

    def cut(self, model: nn.Module, graph: ChannelGraph, example_input: torch.Tensor, budget: Budget | None,
            seed: int, calibration: Calibration | None) -> tuple[nn.Module, list[dict]]:
        return prune_scp(model, graph, example_input, self, budget, inputs_of(calibration, self.name))


@dataclass(frozen=True)
class Reader:
    """A layer that reads the group's maps: its weights as (out, channels, kh, kw), how it slides over the maps, and
    which of the group's maps it reads (an index into the maps captured for the group)."""

    weight: torch.Tensor
    padding: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    maps: int = 0


def following_norms(model: nn.Module, example_input: torch.Tensor) -> dict[str, str]:
    """Conv or Linear name -> the name of the BatchNorm that normalises its output directly (traced on
    `example_input`)."""
    names = {module: name for name, module in model.named_modules()}
    produced: dict[int, str] = {}
    follows: dict[str, str] = {}

    def hook(name: str) -> Callable:
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                if id(inputs[0]) in produced:
                    follows.setdefault(produced[id(inputs[0])], names[module])
            else:
                produced[id(output)] = name
        return record

    watched = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)
    hooks = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, watched)]
    try:
        with torch.no_grad():
            model.eval()(example_input[:1])
    finally:
        for handle in hooks:
            handle.remove()
    return follows


def consumers_of(model: nn.Module, group: ChannelGroup, norms: dict[str, str], reads: Sequence[int],
                 loss_at: str = "conv") -> list[Reader]:
    """The layers reading `group`'s channels. A Linear reading `repeat` features per channel is a convolution with a
    (repeat x 1) kernel over the channels' values laid out as (repeat x 1) maps. reads: per consumer, which captured
    map it reads. loss_at "bn": each weight row is scaled by its output's BatchNorm gain (gamma / running std, from
    `norms`, see following_norms), so the loss is the error after the consumer's BatchNorm, where an output channel
    with a small spread counts for more."""
    consumers = []
    for reader, read in zip(group.consumers, reads):
        module = model.get_submodule(reader.module)
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise PrunedroidError(f"{reader.module}: a consumer must be a Conv2d or Linear, got "
                                  f"{type(module).__name__}")
        weight = consumer_weight(module.weight.detach(), reader, group.channels)
        if loss_at == "bn" and reader.module in norms:
            norm = _norm(model, norms[reader.module])
            gain = cast(torch.Tensor, norm.weight).detach() / (cast(torch.Tensor, norm.running_var) + norm.eps).sqrt()
            weight = weight * gain.view(-1, *[1] * (weight.dim() - 1))
        if isinstance(module, nn.Conv2d):
            pair = lambda value: cast(tuple[int, int], tuple(value))
            consumers.append(Reader(weight, pair(module.padding), pair(module.stride), pair(module.dilation),
                                      read))
        else:
            consumers.append(Reader(weight[..., None], (0, 0), maps=read))
    return consumers


@dataclass(frozen=True)
class Cost:
    """Removing one channel in favour of another. loss: the consumers' mean squared output error per value with
    the chosen combination factor; loss_dropped: the same without combination."""

    loss: float
    factor: float
    loss_dropped: float


Grams = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def map_grams(maps: Sequence[torch.Tensor], batch_size: int) -> Grams:
    """map index -> (its (C, C) Gram matrix sum z_i z_j over every value, (C,) sums), float64, each computed once:
    the statistics every pair of a pointwise consumer and the estimated losses need."""
    return functools.cache(lambda index: _gram(maps[index], batch_size))


def _gram(maps: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    channels = maps.shape[1]
    gram = torch.zeros(channels, channels, dtype=torch.float64)
    sums = torch.zeros(channels, dtype=torch.float64)
    for batch in _batches(maps, batch_size):
        rows = batch.transpose(0, 1).reshape(channels, -1).float()
        gram += (rows @ rows.T).double()
        sums += rows.sum(1, dtype=torch.float64)
    return gram, sums


def _pair_statistics(read: torch.Tensor, consumer: Reader, first: int, second: int, batch_size: int,
                     grams: Grams | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(correlation (2P, 2P), sums (2P,), positions) of the two channels' P-value patches as `consumer` reads them.
    A pointwise consumer (1x1 kernel, stride 1, no padding) reads each value once: its patches' statistics are two
    rows of the map's Gram matrix (`grams`), shared by every pair, instead of a pass over the maps per pair."""
    kh, kw = consumer.weight.shape[2:]
    if grams is not None and (kh, kw) == (1, 1) and consumer.stride == (1, 1) and consumer.padding == (0, 0):
        gram, sums = grams(consumer.maps)
        pair = [first, second]
        return gram[pair][:, pair], sums[pair], read.numel() // read.shape[1]
    correlation = torch.zeros(2 * kh * kw, 2 * kh * kw, dtype=torch.float64)
    sums = torch.zeros(2 * kh * kw, dtype=torch.float64)
    for start in range(0, read.shape[0], batch_size):
        pair_maps = read[start:start + batch_size, [first, second]].float()
        unfolded = F.unfold(pair_maps, (kh, kw), padding=consumer.padding, stride=consumer.stride,
                            dilation=consumer.dilation)  # (b, 2*patches, positions)
        rows = unfolded.transpose(0, 1).reshape(2 * kh * kw, -1)
        correlation += (rows @ rows.T).double()
        sums += rows.sum(1, dtype=torch.float64)
    return correlation, sums, read.shape[0] * unfolded.shape[-1]


def removal_costs(maps: Sequence[torch.Tensor], consumers: Sequence[Reader], first: int, second: int,
                  combine: str, centred: bool, batch_size: int,
                  grams: Grams | None = None) -> dict[tuple[int, int], Cost]:
    """The costs of removing `first` in favour of `second` and the reverse, keyed by (removed, kept).
    maps: the group's maps, (n, C, H, W) each; consumer.maps says which one a consumer reads. centred: measure the
    errors less their mean per output channel - what a following BatchNorm re-estimated on the new outputs cancels -
    so the factor fits the maps' variation. grams: map_grams(maps, batch_size), shared between calls."""
    terms = {(first, second): [0.0, 0.0, 0.0], (second, first): [0.0, 0.0, 0.0]}  # a, b, c of the module docstring
    outputs = 0
    for consumer in consumers:
        kh, kw = consumer.weight.shape[2:]
        patches = kh * kw
        correlation, sums, positions = _pair_statistics(maps[consumer.maps], consumer, first, second, batch_size,
                                                        grams)
        mean = sums / positions
        if centred:
            correlation -= positions * torch.outer(mean, mean)
        outputs += consumer.weight.shape[0] * positions
        blocks = {first: slice(0, patches), second: slice(patches, 2 * patches)}
        for removed, kept in terms:
            w = consumer.weight[:, removed].reshape(consumer.weight.shape[0], patches).double()
            gram = w.T @ w
            r, k = blocks[removed], blocks[kept]
            for index, block in enumerate((correlation[k, k], correlation[r, k], correlation[r, r])):
                terms[removed, kept][index] += float((gram * block).sum())
    costs = {}
    for key, (a, b, c) in terms.items():
        factor = {"lstsq": b / a if a > 0 else 0.0, "sum": 1.0, "none": 0.0}[combine]
        loss = max(factor * factor * a - 2 * factor * b + c, 0.0)
        costs[key] = Cost(loss / outputs, factor, c / outputs)
    return costs


def estimated_losses(maps: Sequence[torch.Tensor], consumers: Sequence[Reader], combine: str, centred: bool,
                     batch_size: int, grams: Grams | None = None) -> torch.Tensor:
    """(C, C) estimate of removal_costs' loss for every (removed, kept) pair, up to a common factor, from one Gram
    matrix: it treats neighbouring positions of a map as uncorrelated, so A P collapses to |W_r|^2 times the error
    energy. Cheap enough to rank all KNN pairs; the exact loss then decides each pair. grams: map_grams(maps,
    batch_size) when the caller has them."""
    grams = grams or map_grams(maps, batch_size)
    channels = maps[0].shape[1]
    total = torch.zeros(channels, channels, dtype=torch.float64)
    for index, read in enumerate(maps):
        readers = [consumer for consumer in consumers if consumer.maps == index]
        if readers:
            weight_energy = torch.stack([consumer.weight.double().pow(2).sum((0, 2, 3)) for consumer in readers])
            total += weight_energy.sum(0)[:, None] * _error_energy(read, grams(index), combine, centred)
    return total


def _error_energy(maps: torch.Tensor, statistics: tuple[torch.Tensor, torch.Tensor], combine: str,
                  centred: bool) -> torch.Tensor:
    """(C, C): the energy of the error left when channel r's maps are replaced by channel t's (times the factor).
    statistics: the maps' (Gram matrix, sums) (map_grams)."""
    channels = maps.shape[1]
    gram, sums = statistics
    if centred:
        values = maps.numel() // channels
        gram = gram - torch.outer(sums, sums) / values
    energy = gram.diagonal()
    removed_energy, kept_energy = energy[:, None], energy[None, :]
    error = {"lstsq": removed_energy - gram.pow(2) / kept_energy.clamp_min(1e-30),
             "sum": removed_energy - 2 * gram + kept_energy, "none": removed_energy.expand(channels, channels)}[combine]
    return error.clamp_min(0)


CostFn = Callable[[int, int], dict[tuple[int, int], Cost]]


@dataclass(frozen=True)
class Removal:
    """One removed channel: where it went, how alike the pair was, and what it costs."""

    merge: Merge
    similarity: float
    cost: Cost


def choose_removals(pairs: Sequence[Pair], cost: CostFn, threshold: float | None = None,
                    wanted: int | None = None, merge_keepers: bool = False,
                    keep_score: torch.Tensor | None = None) -> list[Removal]:
    """Greedy over `pairs` in the order given. Of two channels neither yet involved, the one whose removal costs less
    goes (with `keep_score`, (C,), the lower-scoring one); a channel already kept for another is never removed, so its
    new partner goes into it; a pair with a removed channel is skipped. Stops at the first pair not above
    `threshold`, or after `wanted` removals.
    merge_keepers: also merge two kept channels (the cheaper goes, its group follows it into the other) - the last
    resort when a budget asks for more removals than pairs of free channels allow."""
    removed: dict[int, Removal] = {}
    groups: dict[int, list[int]] = {}  # kept channel -> channels merged into it
    for pair in pairs:
        below = threshold is not None and not pair.similarity > threshold  # a NaN similarity is not above it
        if below or (wanted is not None and len(removed) >= wanted):
            break
        i, j = pair.first, pair.second
        if i in removed or j in removed or (i in groups and j in groups and not merge_keepers):
            continue
        costs = cost(i, j)
        options = [(r, k) for r, k in ((i, j), (j, i)) if r not in groups or (i in groups and j in groups)]
        scores = {(r, k): (costs[r, k].loss if keep_score is None else float(keep_score[r]), -r) for r, k in options}
        gone, kept = min(scores, key=scores.__getitem__)
        for member in groups.pop(gone, []):  # a merged group follows its kept channel
            member_cost = cost(member, kept)[member, kept]
            removed[member] = Removal(Merge(member, kept, member_cost.factor), removed[member].similarity,
                                      member_cost)
            groups.setdefault(kept, []).append(member)
        removed[gone] = Removal(Merge(gone, kept, costs[gone, kept].factor), pair.similarity, costs[gone, kept])
        groups.setdefault(kept, []).append(gone)
    return sorted(removed.values(), key=lambda r: r.merge.removed)


def select_layer(similarity: torch.Tensor, cost: CostFn, config: SCPConfig, wanted: int | None,
                 losses: Callable[[], torch.Tensor], norms: torch.Tensor) -> tuple[list[Removal], int]:
    """The removals for one layer and the number of KNN pairs it had. With a budget (`wanted` removals) the KNN pairs
    go in `config.rank` order (`losses()`: estimated (C, C) losses, for rank "loss"); if they cannot supply enough
    removals, the other pairs follow (most similar first), and as a last resort kept channels merge.
    norms: (C,) filter L1 norms, which decide who stays under config.keep "norm"."""
    knn_pairs = ranked_pairs(similarity, config.knn)
    keep_score = norms if config.keep == "norm" else None
    if wanted is None:
        return choose_removals(knn_pairs, cost, threshold=config.threshold, keep_score=keep_score), len(knn_pairs)
    if config.rank == "loss":
        estimate = losses()
        knn_pairs.sort(key=lambda p: float(min(estimate[p.first, p.second], estimate[p.second, p.first])))
    for merge_keepers in (False, True):
        removals = choose_removals(knn_pairs, cost, wanted=wanted, merge_keepers=merge_keepers,
                                   keep_score=keep_score)
        if len(removals) >= wanted:
            return removals, len(knn_pairs)
        if not merge_keepers:
            chosen = {(p.first, p.second) for p in knn_pairs}
            knn_pairs = knn_pairs + [p for p in ranked_pairs(similarity, None) if (p.first, p.second) not in chosen]
    return removals, len(chosen)


def _norm(model: nn.Module, name: str) -> nn.modules.batchnorm._BatchNorm:
    module = model.get_submodule(name)
    if not isinstance(module, nn.modules.batchnorm._BatchNorm) or module.running_var is None:
        raise PrunedroidError(f"{name}: expected a BatchNorm with running statistics, got {type(module).__name__}")
    return module


def _set_statistics(norm: nn.modules.batchnorm._BatchNorm, outputs: torch.Tensor) -> None:
    """BatchNorm running mean and (unbiased) variance per channel of `outputs` (n, C, ...)."""
    dims = [0, *range(2, outputs.dim())]
    cast(torch.Tensor, norm.running_mean).copy_(outputs.mean(dims))
    cast(torch.Tensor, norm.running_var).copy_(outputs.var(dims))


def _batches(tensor: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    return (tensor[start:start + batch_size] for start in range(0, len(tensor), batch_size))


class _Captured(Exception):
    """Raised by a capture hook once every map wanted has been seen: the rest of the forward pass is not needed."""


def _forward_until_captured(model: nn.Module, batch: torch.Tensor) -> None:
    try:
        model(batch)
    except _Captured:
        pass


@contextlib.contextmanager
def _removed_after(handles: list[RemovableHandle]) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _as_maps(inputs: torch.Tensor, consumer: Consumer, channels: int) -> torch.Tensor:
    """The group's part of a consumer's input as (n, channels, H, W) maps: a conv's input channels from the
    consumer's offset, a Linear's flattened features as (n, channels, repeat, 1)."""
    maps = inputs if inputs.dim() == 4 else inputs.reshape(inputs.shape[0], -1, consumer.repeat, 1)
    return maps[:, consumer.channels(channels)]


@dataclass
class GroupMaps:
    """What a group's consumers read on one batch: the distinct maps (in order of first reading, each (n, C, H, W))
    and, per consumer of the group, the index of the map it reads."""

    maps: list[torch.Tensor]
    reads: list[int]


def read_maps(model: nn.Module, groups: Sequence[ChannelGroup], batch: torch.Tensor) -> list[GroupMaps]:
    """Per group, the maps its consumers read on one batch of inputs (one forward pass, stopped once every consumer
    has read). A layer reading several groups (behind a concatenation) gives each its own channels."""
    readers: dict[str, list[tuple[int, int]]] = {}  # module -> (group, consumer) positions it reads as
    for group_at, group in enumerate(groups):
        for consumer_at, consumer in enumerate(group.consumers):
            readers.setdefault(consumer.module, []).append((group_at, consumer_at))
    read = [GroupMaps([], [0] * len(group.consumers)) for group in groups]
    sources: list[list[tuple[int, int]]] = [[] for _ in groups]  # per map: (id of the input tensor, offset)
    done: set[str] = set()

    def hook(name: str) -> Callable:
        def capture(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if name in done:  # a module called again reads as it did first
                return
            done.add(name)
            for group_at, consumer_at in readers[name]:
                group, consumer = groups[group_at], groups[group_at].consumers[consumer_at]
                source = (id(inputs[0]), consumer.offset)  # the slice keeps its input alive: ids stay unique
                if source not in sources[group_at]:
                    sources[group_at].append(source)
                    read[group_at].maps.append(_as_maps(inputs[0], consumer, group.channels))
                read[group_at].reads[consumer_at] = sources[group_at].index(source)
            if len(done) == len(readers):
                raise _Captured
        return capture

    with _removed_after([model.get_submodule(name).register_forward_pre_hook(hook(name)) for name in readers]):
        _forward_until_captured(model, batch)
    return read


def _distinct(maps: list[torch.Tensor], reads: list[int]) -> tuple[list[torch.Tensor], list[int]]:
    """`maps` with exact copies dropped (a concatenation hands the same maps to many layers, as in a DenseNet) and
    `reads` pointing at the one kept."""
    kept: list[torch.Tensor] = []
    index: list[int] = []
    for candidate in maps:
        at = next((i for i, earlier in enumerate(kept) if torch.equal(earlier, candidate)), None)
        if at is None:
            kept.append(candidate)
            at = len(kept) - 1
        index.append(at)
    return kept, [index[read] for read in reads]


@torch.no_grad()
def redundancy_scores(model: nn.Module, graph: ChannelGraph, config: SCPConfig,
                      inputs: torch.Tensor) -> list[torch.Tensor]:
    """Per group, (C,) one minus each channel's highest similarity (config.criterion, in [0, 1] for maps after
    ReLU) to another channel of its group, from the unpruned model's maps on `inputs` (the calibration batch, as the
    model takes it): a channel with a near twin is cheap to lose, in any group (global allocation ranks these)."""
    accumulators = [SimilarityAccumulator(config.criterion) for _ in graph.groups]
    model = model.eval()
    for batch in _batches(inputs, config.batch_size):
        for accumulator, read in zip(accumulators, read_maps(model, graph.groups, batch)):
            for maps in read.maps:
                accumulator.add(maps)
    scores = []
    for accumulator in accumulators:
        similarity = accumulator.similarity()
        nearest = similarity.clone().fill_diagonal_(-math.inf).max(dim=1).values if len(similarity) > 1 else None
        scores.append(torch.ones(1) if nearest is None else 1 - nearest.float())
    return scores


@torch.no_grad()
def prune_scp(model: nn.Module, graph: ChannelGraph, example_input: torch.Tensor, config: SCPConfig,
              budget: Budget | None, inputs: torch.Tensor) -> tuple[nn.Module, list[dict]]:
    """SCP on `inputs` (the calibration set as the model takes it, e.g. normalised images (n, 3, 32, 32)). Exactly
    one of config.threshold and `budget` decides how many channels go. Returns the pruned model (eval mode) and one
    report row per group."""
    if (config.threshold is None) == (budget is None):
        raise PrunedroidError("SCP needs exactly one of `threshold` (prune pairs above it) or a budget "
                              "(`mac_reduction`, `ratio` or `layer_ratios`)")
    if not len(inputs):
        raise PrunedroidError("SCP compares feature maps: give calibration inputs (held-out data)")
    if len(inputs) < config.batch_size:  # a small calibration set is one batch
        config = dataclasses.replace(config, batch_size=len(inputs), eval_images=len(inputs))
    counts = kept_counts(graph, budget) if budget is not None else None
    cutter = Cutter(model, example_input)  # cut group by group; the caller's model stays as it is
    current = cutter.model
    norms = following_norms(current, example_input)
    rows = []
    now = list(graph.channels)  # channels per group in `current`
    for group in graph.groups:
        group = graph.at(group, now)
        wanted = None if counts is None else group.channels - counts[group.index]
        if wanted == 0:  # a group the budget leaves whole needs no maps (sensitivity cuts one group at a time)
            rows.append(_layer_row(group, list(range(group.channels)), [], 0))
            continue
        batches = [read_maps(current, [group], batch)[0] for batch in _batches(inputs, config.batch_size)]
        maps, reads = _distinct([torch.cat(parts) for parts in zip(*(read.maps for read in batches))],
                                batches[0].reads)
        del batches
        similarity = channel_similarity((part for read in maps for part in _batches(read, config.batch_size)),
                                        config.criterion)
        consumers = consumers_of(current, group, norms, reads, config.loss_at)
        grams = map_grams(maps, config.batch_size)
        cost = functools.cache(lambda i, j: removal_costs(maps, consumers, i, j, config.combine,  # noqa: B023
                                                          config.recalibrate, config.batch_size, grams))  # noqa: B023
        losses = lambda: estimated_losses(maps, consumers, config.combine, config.recalibrate,  # noqa: B023
                                          config.batch_size, grams)  # noqa: B023
        removals, pairs = select_layer(similarity, cost, config, wanted, losses, group_l1(current, group))
        keep = sorted(set(range(group.channels)) - {r.merge.removed for r in removals})
        if removals:
            state = current.state_dict()
            fold_channels(state, group, [r.merge for r in removals])
            cutter.cut(group, keep, state)
            now[group.index] = len(keep)
            if config.recalibrate:
                _recalibrate(current, group, norms, maps, consumers, keep, inputs, config.batch_size)
        rows.append(_layer_row(group, keep, removals, pairs))
    return current, rows


def _recalibrate(model: nn.Module, group: ChannelGroup, norms: dict[str, str], maps: Sequence[torch.Tensor],
                 readers: Sequence[Reader], keep: list[int], inputs: torch.Tensor, batch_size: int) -> None:
    """Re-measures the BatchNorm after each consumer of a just-cut group on the consumer's new outputs, so its
    normalised output keeps the mean and variance the rest of the network was trained on. A consumer reading only
    the group is run on the kept maps; one reading other channels too (behind a concatenation) is measured in a
    forward pass of `inputs`."""
    outputs: dict[str, torch.Tensor] = {}
    whole: list[str] = []
    for consumer, reader in zip(group.consumers, readers):
        if consumer.module not in norms or consumer.module in outputs or consumer.module in whole:
            continue
        module = model.get_submodule(consumer.module)
        width = module.in_channels if isinstance(module, nn.Conv2d) else cast(nn.Linear, module).in_features
        if width != len(keep) * consumer.repeat:
            whole.append(consumer.module)
            continue
        kept = maps[reader.maps][:, keep]
        if isinstance(module, nn.Linear):
            kept = kept.flatten(1)
        outputs[consumer.module] = torch.cat([module(batch) for batch in _batches(kept, batch_size)])
    if whole:
        outputs.update(_outputs(model, whole, inputs, batch_size))
    for name, values in outputs.items():
        _set_statistics(_norm(model, norms[name]), values)


def _outputs(model: nn.Module, names: Sequence[str], inputs: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    """The outputs of the modules `names` (their first call) on `inputs`, each (n, ...), batch by batch, every
    forward pass stopped once all have run."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    batch_outputs: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable:
        def capture(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            batch_outputs.setdefault(name, output)
            if len(batch_outputs) == len(seen):
                raise _Captured
        return capture

    with _removed_after([model.get_submodule(name).register_forward_hook(hook(name)) for name in seen]):
        for batch in _batches(inputs, batch_size):
            batch_outputs.clear()
            _forward_until_captured(model, batch)
            for name, values in seen.items():
                values.append(batch_outputs[name])
    return {name: torch.cat(values) for name, values in seen.items()}


def _layer_row(group: ChannelGroup, keep: list[int], removals: list[Removal], pairs: int) -> dict:
    mean = lambda values: sum(values) / len(values) if values else None
    return {"layer": group.index, "channels_before": group.channels, "channels_after": len(keep), "kept": keep,
            "knn_pairs": pairs, "removed_similarity_mean": mean([r.similarity for r in removals]),
            "pruning_loss": sum(r.cost.loss for r in removals),
            "pruning_loss_dropped": sum(r.cost.loss_dropped for r in removals),
            "merges": [[r.merge.removed, r.merge.kept, round(r.merge.factor, 6)] for r in removals]}
