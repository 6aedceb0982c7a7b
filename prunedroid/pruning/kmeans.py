"""K-means filter clustering (the blog in seeds/000): filters whose weights are alike compute alike, so each layer's
filters are clustered with k-means and one filter per cluster stays.

The blog fixes K at half the filters and keeps a random member; here K comes from a budget (half the filters is
`Budget(Ratio(0.5))`, the default) or is chosen per layer by the elbow of the inertia curve or by the best silhouette,
and the kept filter is the member nearest its centroid (or a random one, to reproduce the blog). Optionally the removed
members' next-layer weights are added to the kept filter's (weight combination, shared with SCP), as if each removed
filter's map were its keeper's.

Group by group, in the model's order: once a group is cut (and folded), the next group's filters are clustered as
they now are - with the removed input channels gone and the folded weights in - so every clustering sees the network
it will prune. A group's filters are its producers' (a residual group's channel is made by several convs: their
filters are clustered side by side).

Cheap exact geometry: a layer's N filters span at most N dimensions, so each filter is replaced by its coordinates in
that span (from the N x N Gram matrix). Distances, centroids and inertia are unchanged, and k-means costs O(N^2) per
step instead of O(N D) - 9x fewer for 512 filters of 512 x 3 x 3 weights.

Measured on trained VGG16 filters (benchmarks/results/kmeans_quick.md): they barely form clusters - inertia falls
almost in step with K and silhouettes stay near 0 beyond the first layer - so the automatic choices are bounded below
by `min_keep`.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn

from prunedroid.errors import PrunedroidError
from prunedroid.options import check, option
from prunedroid.pruning.budget import Budget, Ratio, kept_counts
from prunedroid.pruning.groups import ChannelGraph, ChannelGroup, conv_named
from prunedroid.pruning.method import Calibration, PruningMethod
from prunedroid.pruning.surgery import Cutter, Merge, fold_channels

if TYPE_CHECKING:
    from sklearn.cluster import KMeans

CLUSTERS = ("budget", "elbow", "silhouette")
KEEP = ("centroid", "random")
COMBINE = ("none", "sum")
SEARCH_GRID = 9  # K values tried per zoom step of the automatic search


@dataclass(frozen=True)
class KMeansConfig(PruningMethod):
    """K-means' options (see the module docstring). min_keep: the automatic search keeps at least this fraction of
    a group's filters (a `min_keep` given without a non-uniform allocation is this one)."""

    name: ClassVar[str] = "kmeans"
    summary: ClassVar[str] = "k-means filter clustering, the blog's method"
    clusters: str = option("budget", "K per group from the budget (half the filters without one), or chosen per "
                                     "group by elbow or silhouette")
    keep: str = option("centroid", "the filter kept per cluster: the one nearest the centroid (centroid) or a "
                                   "random member (random, the blog)")
    combine: str = option("none", "weight combination: none (the blog) or sum (removed members' consumer weights "
                                  "added to their keeper's)")
    normalize: bool = option(False, "cluster unit-length filters (direction only)")
    restarts: int = option(4, "k-means++ initialisations per clustering, the best kept")
    min_keep: float = 0.25

    def __post_init__(self) -> None:
        checks = [(self.clusters in CLUSTERS, f"unknown `clusters` {self.clusters!r}; choose one of "
                                                f"{', '.join(CLUSTERS)}"),
                  (self.keep in KEEP, f"unknown kept-filter rule {self.keep!r}; choose one of {', '.join(KEEP)}"),
                  (self.combine in COMBINE, f"k-means weight combination must be one of {', '.join(COMBINE)}, "
                                            f"got {self.combine!r}"),
                  (self.restarts >= 1, f"restarts must be >= 1, got {self.restarts}"),
                  (0 < self.min_keep <= 1, f"min-keep is a fraction of a layer's filters in (0, 1], got "
                                                 f"{self.min_keep}")]
        check(checks, "k-means")

    def resolve_budget(self, budget: Budget | None, default: Budget | None) -> Budget | None:
        """The budget this configuration prunes to: none when K is chosen automatically (a budget is then an error),
        else the one given, the caller's default, or the blog's half the filters."""
        if self.clusters != "budget":
            if budget is not None:
                raise PrunedroidError(f"`clusters` {self.clusters} chooses K per layer itself; drop `mac_reduction`/"
                                      f"`ratio`/`layer_ratios`, or use `clusters` budget")
            return None
        return budget or default or Budget(Ratio(0.5))

    def scores(self, model: nn.Module, graph: ChannelGraph, example_input: torch.Tensor, seed: int,
               calibration: Calibration | None) -> list[torch.Tensor]:
        return distinct_scores(model, graph, self)

    def cut(self, model: nn.Module, graph: ChannelGraph, example_input: torch.Tensor, budget: Budget | None,
            seed: int, calibration: Calibration | None) -> tuple[nn.Module, list[dict]]:
        return prune_kmeans(model, graph, example_input, self, budget, seed)


def filter_points(weight: torch.Tensor, normalize: bool) -> np.ndarray:
    """(N, ...) filters as (N, N) float64 points with the same pairwise distances: Q sqrt(L) from the eigenvectors
    of their Gram matrix X X^T = Q L Q^T (an N x N problem, however long the filters)."""
    rows = weight.detach().flatten(1).double().numpy()
    if normalize:
        rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    eigenvalues, eigenvectors = np.linalg.eigh(rows @ rows.T)
    return eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))


def spread(points: np.ndarray) -> float:
    """Total sum of squared distances to the mean: the inertia of a single cluster."""
    return float(((points - points.mean(0)) ** 2).sum())


def group_filters(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """(channels, ...) the group's producers' filters, flattened and side by side."""
    return torch.cat([conv_named(model, name).weight.detach().flatten(1) for name in group.producers], dim=1)


def distinct_scores(model: nn.Module, graph: ChannelGraph, config: KMeansConfig) -> list[torch.Tensor]:
    """Per group, (C,) each filter's distance to its nearest other filter (filter_points, config.normalize):
    a filter close to another would share its cluster, so it is the cheaper to lose (global allocation ranks these)."""
    scores = []
    for group in graph.groups:
        points = torch.from_numpy(filter_points(group_filters(model, group), config.normalize))
        distances = torch.cdist(points, points).fill_diagonal_(float("inf"))
        scores.append(distances.min(dim=1).values.float() if len(points) > 1 else torch.ones(1))
    return scores


def fit(points: np.ndarray, k: int, restarts: int, seed: int) -> KMeans:
    from sklearn.cluster import KMeans  # imported when clustering: scikit-learn takes seconds to import
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # More clusters than distinct filters (dead or copied filters) is expected; representatives() handles it.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(n_clusters=k, init="k-means++", n_init=restarts, random_state=seed).fit(points)


def search_k(points: np.ndarray, choice: str, lowest: int, seed: int) -> tuple[int, dict[int, float]]:
    """The K that `choice` picks in [lowest, N] and the curve it measured ({K: inertia or silhouette}).

    elbow: the knee of inertia against K (Kneedle: the point farthest below the chord from (1, total sum of
    squares) to (N, 0), on axes scaled to [0, 1]); silhouette: the highest mean silhouette (K in [2, N - 1]).
    Cheap steps: SEARCH_GRID values of K across the range, then the same across the best one's neighbours, until
    neighbouring K differ by one - about SEARCH_GRID x log(N) clusterings rather than N, each with one k-means++
    start (the chosen K is then clustered again with every restart)."""
    n = len(points)
    fitted: dict[int, KMeans] = {}

    def clustering(k: int) -> KMeans:
        if k not in fitted:
            fitted[k] = fit(points, k, 1, seed)
        return fitted[k]

    if choice == "elbow":
        low, high = min(max(lowest, 1), n), n
        value: Callable[[int], float] = lambda k: 0.0 if k == n else float(clustering(k).inertia_)
        total = spread(points)
        # The chord runs over the whole curve, K = 1..N, whatever part is searched: scaling by a bounded part alone
        # would blow the noise beyond the last real cluster up into a knee of its own.
        objective = lambda k: (1 - (k - 1) / max(n - 1, 1)) - (value(k) / total if total > 0 else 0.0)
    else:
        low, high = max(2, lowest), n - 1
        if low > high:  # two filters or fewer: no silhouette exists, keep them all
            return n, {}
        # Identical filters can leave a clustering with one label, where no silhouette exists: the worst score.
        from sklearn.metrics import silhouette_score

        value = lambda k: (float(silhouette_score(points, clustering(k).labels_))
                           if 2 <= len(np.unique(clustering(k).labels_)) < n else -1.0)
        objective = value
    start, stop = low, high
    while True:
        grid = sorted({int(k) for k in np.linspace(start, stop, SEARCH_GRID).round()})
        best = max(grid, key=lambda k: (objective(k), -k))  # ties: the smaller network
        if len(grid) == stop - start + 1:
            break
        at = grid.index(best)
        start, stop = grid[max(at - 1, 0)], grid[min(at + 1, len(grid) - 1)]
    return best, {k: value(k) for k in sorted(fitted)}


def comparable(distances: np.ndarray) -> np.ndarray:
    """`distances` rounded to 9 significant digits of the largest, so that ties (two members of a cluster are equally
    far from its centre) stay ties whatever the last bits a CPU's BLAS and LAPACK kernels leave: which filter a tie
    keeps is then decided by a rule, not by rounding, and a cut is the same on every machine."""
    scale = float(distances.max(initial=0.0))
    return np.round(distances / scale, 9) if scale > 0 else distances


def representatives(points: np.ndarray, clustering: KMeans, k: int, keep: str,
                    generator: np.random.Generator) -> tuple[list[int], list[Merge]]:
    """One filter per cluster (`k` in all) and a Merge (factor 1) of every other filter into its cluster's keeper.

    Identical filters can leave fewer non-empty clusters than `k`; the filters farthest from their centroid then
    stay too, so a budget is still met exactly."""
    labels, centres = clustering.labels_, clustering.cluster_centers_
    distance = comparable(np.linalg.norm(points - centres[labels], axis=1))
    norm = np.linalg.norm(points, axis=1)
    keepers = {}
    for cluster in np.unique(labels):
        members = np.flatnonzero(labels == cluster)
        # Members equally near the centre (the two of a pair always are): the stronger filter stays.
        keepers[cluster] = int(members[np.lexsort((-norm[members], distance[members]))[0]] if keep == "centroid"
                               else generator.choice(members))
    kept = set(keepers.values())
    for extra in np.lexsort((-norm, -distance)):
        if len(kept) >= k:
            break
        kept.add(int(extra))
    merges = [Merge(removed=i, kept=keepers[labels[i]], factor=1.0) for i in range(len(points)) if i not in kept]
    return sorted(kept), merges


@torch.no_grad()
def prune_kmeans(model: nn.Module, graph: ChannelGraph, example_input: torch.Tensor, config: KMeansConfig,
                 budget: Budget | None, seed: int = 0) -> tuple[nn.Module, list[dict]]:
    """K-means filter clustering of every group; returns the pruned model (eval mode) and one report row per
    group. Deterministic for a fixed seed."""
    if (config.clusters == "budget") == (budget is None):
        raise PrunedroidError("k-means needs a budget with `clusters` budget, and none with `clusters` "
                              "elbow/silhouette")
    counts = kept_counts(graph, budget) if budget is not None else None
    cutter = Cutter(model, example_input)  # cut group by group; the caller's model stays as it is
    current = cutter.model
    generator = np.random.default_rng(seed)
    rows = []
    now = list(graph.channels)  # channels per group in `current`
    for group in graph.groups:
        layer, group = group.index, graph.at(group, now)
        points = filter_points(group_filters(current, group), config.normalize)
        curve: dict[int, float] = {}
        if counts is not None:
            k = counts[layer]
        else:
            k, curve = search_k(points, config.clusters, math.ceil(config.min_keep * len(points)), seed)
        # A group kept whole needs no clustering (sensitivity cuts one group at a time).
        kept, inertia, largest = list(range(len(points))), 0.0, 1
        merges: list[Merge] = []
        if k < len(points):
            clustering = fit(points, k, config.restarts, seed)
            kept, merges = representatives(points, clustering, k, config.keep, generator)
            inertia, largest = float(clustering.inertia_), int(np.bincount(clustering.labels_).max())
            folded = None
            if config.combine == "sum":
                folded = current.state_dict()  # fold_channels replaces the weights it edits, never writes in place
                fold_channels(folded, group, merges)
            cutter.cut(group, kept, folded)
            now[layer] = len(kept)
        total = spread(points)
        rows.append({"layer": layer, "channels_before": group.channels, "channels_after": len(kept), "kept": kept,
                     "k": k, "clusters": config.clusters, "inertia_share": inertia / total if total > 0 else 0.0,
                     "largest_cluster": largest,
                     "search": [[key, round(value, 6)] for key, value in sorted(curve.items())],
                     "merges": [[m.removed, m.kept] for m in merges] if config.combine == "sum" else []})
    return current.eval(), rows
