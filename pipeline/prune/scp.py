"""Similarity-aware channel pruning (SCP; Zhang et al., "Learning Compact Networks via Similarity-Aware Channel
Pruning", MIPR 2020): two channels whose feature maps are nearly the same carry the same information, so one goes,
and the next layer reads the survivor in its place (weight combination), rebuilding its output with fewer channels.

Layer by layer, as in the paper: the evaluation images' maps of layer l are computed on the network already pruned
below l, similar channel pairs are found among k nearest neighbours, each pair's *pruning loss* (the next layer's
output error if one of the two goes) decides which one goes, and the removed channel's next-layer weights are folded
into its twin. One layer's maps for the evaluation set are held at a time (n x C x H x W floats: 268 MB for 1,024
images at VGG16's widest layer), so the whole analysis costs one forward pass.

Three measured additions to the paper, each an option (benchmarks/results/scp_quick.md compares them):
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

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import data as cifar
from pipeline.errors import PipelineError
from pipeline.models import VGG, build_model
from pipeline.options import check
from pipeline.prune.budget import Budget, kept_counts
from pipeline.prune.l1 import filter_l1
from pipeline.prune.similarity import CRITERIA, Pair, channel_similarity, ranked_pairs
from pipeline.prune.surgery import ChannelCoupling, Merge, fold_channels, prune_channels, vgg_couplings

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
class SCPConfig:
    """criterion: cosine, euclidean, manhattan or chebyshev (see pipeline.prune.similarity);
    knn: nearest neighbours per channel in the KNN similarity matrix;
    threshold: prune every KNN pair more similar than this (in [0, 1]); None: a Budget says how many go per layer;
    combine: lstsq, sum or none;
    rank: with a budget, which pairs go first: "similarity" (most similar, the paper) or "loss" (cheapest pruning loss);
    loss_at: the pruning loss is the error of the consumer's conv output ("conv") or of its BatchNorm output ("bn");
    keep: which of a pair stays: "loss" (the one whose removal costs more, the paper) or "norm" (the filter with the
    larger L1 norm; the pruning loss then only chooses and orders the pairs);
    recalibrate: re-estimate the next layer's BatchNorm statistics on the evaluation maps after each layer is cut;
    eval_images: evaluation-set size; batch_size: images per forward pass."""

    name: ClassVar[str] = "scp"
    criterion: str = "cosine"
    knn: int = 3
    threshold: float | None = None
    combine: str = "lstsq"
    rank: str = "loss"
    loss_at: str = "conv"
    keep: str = "loss"
    recalibrate: bool = True
    eval_images: int = 1024
    batch_size: int = 256

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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def data_images(self) -> int:
        """Held-out training images the method analyses."""
        return self.eval_images

    def resolve_budget(self, budget: Budget | None, default: Budget | None) -> Budget | None:
        """The budget SCP prunes to: none in threshold mode (a budget is then an error), else the one given or the
        caller's default; one of the two must decide how many channels go."""
        if self.threshold is not None:
            if budget is not None:
                raise PipelineError("give either --threshold or a budget (--mac-reduction, --ratio, --layer-ratios), "
                                    "not both")
            return None
        if budget is None and default is None:
            raise PipelineError("SCP needs exactly one of --threshold (prune pairs above it) or a budget "
                                "(--mac-reduction, --ratio or --layer-ratios)")
        return budget or default


@dataclass(frozen=True)
class Consumer:
    """A layer that reads the pruned layer's maps: its weights as (out, channels, kh, kw), and its padding."""

    weight: torch.Tensor
    padding: tuple[int, int]


def consumers_of(model: nn.Module, coupling: ChannelCoupling, loss_at: str = "conv") -> list[Consumer]:
    """The layers reading `coupling`'s channels; a Linear reads 1x1 maps (VGG flattens 1x1 maps into it).
    loss_at "bn": each weight row is scaled by its output's BatchNorm gain (gamma / running std), so the loss is the
    error after the consumer's BatchNorm, where an output channel with a small spread counts for more."""
    consumers = []
    for key, dim in coupling.consumers:
        path = key.rsplit(".", 1)[0]
        module = model.get_submodule(path)
        weight = module.weight.detach().movedim(dim, 1)
        parent, index = path.rsplit(".", 1)
        following = model.get_submodule(parent)[int(index) + 1:int(index) + 2]
        if loss_at == "bn" and len(following) and isinstance(following[0], nn.modules.batchnorm._BatchNorm):
            norm = following[0]
            gain = norm.weight.detach() / (norm.running_var + norm.eps).sqrt()
            weight = weight * gain.view(-1, *[1] * (weight.dim() - 1))
        if isinstance(module, nn.Conv2d):
            if module.stride != (1, 1) or module.dilation != (1, 1) or module.groups != 1:
                raise PipelineError(f"{key}: SCP's pruning loss supports stride-1, undilated, ungrouped convs only")
            consumers.append(Consumer(weight, tuple(module.padding)))
        else:
            consumers.append(Consumer(weight[:, :, None, None], (0, 0)))
    return consumers


@dataclass(frozen=True)
class Cost:
    """Removing one channel in favour of another. loss: the consumers' mean squared output error per value with
    the chosen combination factor; loss_dropped: the same without combination."""

    loss: float
    factor: float
    loss_dropped: float


def removal_costs(maps: torch.Tensor, consumers: Sequence[Consumer], first: int, second: int, combine: str,
                  centred: bool, batch_size: int) -> dict[tuple[int, int], Cost]:
    """The costs of removing `first` in favour of `second` and the reverse, keyed by (removed, kept).
    maps: (n, C, H, W) of the layer. centred: measure the errors less their mean per output channel - what a
    following BatchNorm re-estimated on the new outputs cancels - so the factor fits the maps' variation."""
    terms = {(first, second): [0.0, 0.0, 0.0], (second, first): [0.0, 0.0, 0.0]}  # a, b, c of the module docstring
    outputs = 0
    for consumer in consumers:
        kh, kw = consumer.weight.shape[2:]
        patches = kh * kw
        correlation = torch.zeros(2 * patches, 2 * patches, dtype=torch.float64)
        sums = torch.zeros(2 * patches, dtype=torch.float64)
        for start in range(0, maps.shape[0], batch_size):
            pair_maps = maps[start:start + batch_size, [first, second]].float()
            unfolded = F.unfold(pair_maps, (kh, kw), padding=consumer.padding)  # (b, 2*patches, positions)
            rows = unfolded.transpose(0, 1).reshape(2 * patches, -1)
            correlation += (rows @ rows.T).double()
            sums += rows.sum(1, dtype=torch.float64)
        positions = maps.shape[0] * unfolded.shape[-1]
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


def estimated_losses(maps: torch.Tensor, consumers: Sequence[Consumer], combine: str, centred: bool,
                     batch_size: int) -> torch.Tensor:
    """(C, C) estimate of removal_costs' loss for every (removed, kept) pair, up to a common factor, from one Gram
    matrix: it treats neighbouring positions of a map as uncorrelated, so A P collapses to |W_r|^2 times the error
    energy. Cheap enough to rank all KNN pairs; the exact loss then decides each pair."""
    channels = maps.shape[1]
    gram = torch.zeros(channels, channels, dtype=torch.float64)
    sums = torch.zeros(channels, dtype=torch.float64)
    for batch in _batches(maps, batch_size):
        rows = batch.transpose(0, 1).reshape(channels, -1).float()
        gram += (rows @ rows.T).double()
        sums += rows.sum(1, dtype=torch.float64)
    if centred:
        values = maps.numel() // channels
        gram -= torch.outer(sums, sums) / values
    energy = gram.diagonal()
    removed_energy, kept_energy = energy[:, None], energy[None, :]
    error = {"lstsq": removed_energy - gram.pow(2) / kept_energy.clamp_min(1e-30),
             "sum": removed_energy - 2 * gram + kept_energy, "none": removed_energy.expand(channels, channels)}[combine]
    weight_energy = sum(consumer.weight.double().pow(2).sum((0, 2, 3)) for consumer in consumers)
    return weight_energy[:, None] * error.clamp_min(0)


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
    if wanted == 0:  # a layer the budget leaves whole
        return [], 0
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


def _set_statistics(norm: nn.Module, outputs: torch.Tensor) -> None:
    """BatchNorm running mean and (unbiased) variance per channel of `outputs` (n, C, ...)."""
    dims = [0, *range(2, outputs.dim())]
    norm.running_mean.copy_(outputs.mean(dims))
    norm.running_var.copy_(outputs.var(dims))


def _batches(tensor: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    return (tensor[start:start + batch_size] for start in range(0, len(tensor), batch_size))


@torch.no_grad()
def redundancy_scores(model: VGG, config: SCPConfig, images: torch.Tensor) -> list[torch.Tensor]:
    """Per conv layer, (C,) one minus each channel's highest similarity (config.criterion, in [0, 1] for maps after
    ReLU) to another channel of its layer, from the unpruned model's maps on `images` (uint8 (n, 3, 32, 32)): a
    channel with a near twin is cheap to lose, in any layer (global allocation ranks these)."""
    inputs, scores = cifar.normalize(images), []
    for block in model.eval().conv_blocks():
        inputs = torch.cat([block(batch) for batch in _batches(inputs, config.batch_size)])
        similarity = channel_similarity(_batches(inputs, config.batch_size), config.criterion)
        nearest = similarity.clone().fill_diagonal_(-math.inf).max(dim=1).values if len(similarity) > 1 else None
        scores.append(torch.ones(1) if nearest is None else 1 - nearest.float())
    return scores


@torch.no_grad()
def prune_scp(model: VGG, config: SCPConfig, budget: Budget | None, images: torch.Tensor) -> tuple[VGG, list[dict]]:
    """SCP on `images` (uint8 (n, 3, 32, 32) evaluation set). Exactly one of config.threshold and `budget` decides
    how many channels go. Returns the pruned model (eval mode) and one report row per conv layer."""
    if (config.threshold is None) == (budget is None):
        raise PipelineError("SCP needs exactly one of --threshold (prune pairs above it) or a budget "
                            "(--mac-reduction, --ratio or --layer-ratios)")
    if len(images) < config.batch_size:
        raise PipelineError(f"the evaluation set has {len(images)} images, fewer than one batch "
                            f"({config.batch_size}); use more evaluation images or a smaller batch")
    counts = kept_counts(model.spec, budget) if budget is not None else None
    current = build_model(model.spec)
    current.load_state_dict(model.state_dict())
    current.eval()
    inputs = cifar.normalize(images)
    rows, changed = [], False  # changed: the layer below lost channels, so this layer's input weights were edited
    for coupling in vgg_couplings(current):
        layer = coupling.layer
        block = current.conv_blocks()[layer]
        outputs = torch.cat([block[0](batch) for batch in _batches(inputs, config.batch_size)])
        if config.recalibrate and changed:
            _set_statistics(block[1], outputs)
        maps = torch.cat([block[1:](batch) for batch in _batches(outputs, config.batch_size)])
        del outputs
        similarity = channel_similarity(_batches(maps, config.batch_size), config.criterion)
        consumers = consumers_of(current, coupling, config.loss_at)
        cost = functools.cache(lambda i, j: removal_costs(maps, consumers, i, j, config.combine,  # noqa: B023
                                                          config.recalibrate, config.batch_size))
        wanted = None if counts is None else coupling.channels - counts[layer]
        losses = lambda: estimated_losses(maps, consumers, config.combine, config.recalibrate,  # noqa: B023
                                          config.batch_size)
        removals, pairs = select_layer(similarity, cost, config, wanted, losses, filter_l1(block[0]))
        keep = sorted(set(range(coupling.channels)) - {r.merge.removed for r in removals})
        if removals:
            state = current.state_dict()
            fold_channels(state, coupling, [r.merge for r in removals])
            current = prune_channels(current, {layer: keep}, state_dict=state).eval()
        inputs, changed = maps[:, keep], bool(removals)
        rows.append(_layer_row(coupling, keep, removals, pairs))
    head, norm = current.classifier[0], current.classifier[1] if len(current.classifier) > 1 else None
    if config.recalibrate and changed and isinstance(norm, nn.BatchNorm1d):
        _set_statistics(norm, head(inputs.flatten(1)))
    return current, rows


def _layer_row(coupling: ChannelCoupling, keep: list[int], removals: list[Removal], pairs: int) -> dict:
    mean = lambda values: sum(values) / len(values) if values else None
    return {"layer": coupling.layer, "channels_before": coupling.channels, "channels_after": len(keep), "kept": keep,
            "knn_pairs": pairs, "removed_similarity_mean": mean([r.similarity for r in removals]),
            "pruning_loss": sum(r.cost.loss for r in removals),
            "pruning_loss_dropped": sum(r.cost.loss_dropped for r in removals),
            "merges": [[r.merge.removed, r.merge.kept, round(r.merge.factor, 6)] for r in removals]}
