"""How alike two channels' feature maps are: four criteria, accumulated batch by batch, and the k-nearest-neighbour
pairs SCP considers.

A channel's map over an evaluation set is one long vector z (images x height x width values). Raw distances between
such vectors grow with the number of values and with the layer's activation scale, so a threshold on 1/(1+d) would
mean something different in every layer and for every evaluation-set size. Each distance is therefore made
dimensionless: a per-value average (RMS for Euclidean, mean absolute value for Manhattan; Chebyshev is already a
maximum) divided by the same statistic of the whole layer's activations:

    euclidean  d = rms(z_i - z_j) / rms(Z)        manhattan  d = mean|z_i - z_j| / mean|Z|
    chebyshev  d = max|z_i - z_j| / max|Z|        cosine     s = <z_i, z_j> / (|z_i| |z_j|), clipped to [0, 1]

and s = 1 / (1 + d) for the distances. Identical maps score 1 under every criterion; unrelated maps of a layer score
about 1/(1 + sqrt(2)) ~ 0.4 (Euclidean) whatever the layer's scale or the number of images, so one threshold means
the same in every layer. For ReLU maps Chebyshev's d lies in [0, 1], so its similarity never drops below 0.5.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from prunedroid.errors import PrunedroidError

CRITERIA = ("cosine", "euclidean", "manhattan", "chebyshev")


@dataclass
class SimilarityAccumulator:
    """Pairwise statistics of a layer's C channel maps, fed one batch of maps at a time (memory O(C^2), not O(maps)).

    cosine, euclidean: the Gram matrix sum z_i z_j gives both exactly; manhattan: summed |z_i - z_j|;
    chebyshev: running max |z_i - z_j|. `scale` holds the layer statistic the distance is divided by."""

    criterion: str
    pairwise: torch.Tensor | None = None  # (C, C) float64
    scale: float = 0.0
    values: int = 0  # values per channel seen so far

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise PrunedroidError(f"unknown similarity criterion {self.criterion!r}; choose one "
                                  f"of {', '.join(CRITERIA)}")

    def add(self, maps: torch.Tensor) -> None:
        """maps: (batch, C, H, W) or (batch, C) activations of one layer."""
        channels = maps.shape[1]
        rows = maps.detach().transpose(0, 1).reshape(channels, -1).float()  # (C, values)
        if self.criterion in ("cosine", "euclidean"):
            batch = (rows @ rows.T).double()
        elif self.criterion == "manhattan":
            batch = torch.cdist(rows, rows, p=1).double()
            self.scale += float(rows.abs().sum(dtype=torch.float64))
        else:
            batch = torch.cdist(rows, rows, p=float("inf")).double()
            self.scale = max(self.scale, float(rows.abs().max()))
        if self.pairwise is None:
            self.pairwise = batch
        elif self.criterion == "chebyshev":
            self.pairwise = torch.maximum(self.pairwise, batch)
        else:
            self.pairwise += batch
        self.values += rows.shape[1]

    def similarity(self) -> torch.Tensor:
        """(C, C) float64 similarities in [0, 1], 1 on the diagonal."""
        if self.pairwise is None:
            raise PrunedroidError("no feature maps were seen; the evaluation set is empty")
        pairwise, channels = self.pairwise, self.pairwise.shape[0]
        if self.criterion in ("cosine", "euclidean"):
            energy = pairwise.diagonal()
            if self.criterion == "cosine":
                norms = energy.sqrt()
                both = norms[:, None] * norms[None, :]
                dead = norms == 0
                # A silent channel is a copy of another silent one and like no live one.
                similarity = torch.where(both > 0, pairwise / both.clamp_min(1e-300),
                                         (dead[:, None] & dead[None, :]).double())
                return similarity.clamp(0, 1).fill_diagonal_(1)
            mean_square_diff = (energy[:, None] + energy[None, :] - 2 * pairwise).clamp_min(0) / self.values
            layer_mean_square = float(energy.sum()) / (channels * self.values)
            distance = _relative(mean_square_diff.sqrt(), layer_mean_square ** 0.5)
        elif self.criterion == "manhattan":
            distance = _relative(pairwise / self.values, self.scale / (channels * self.values))
        else:
            distance = _relative(pairwise, self.scale)
        return (1 / (1 + distance)).fill_diagonal_(1)


def _relative(distance: torch.Tensor, layer_scale: float) -> torch.Tensor:
    # A layer whose maps are all zero: every channel is a copy of every other.
    return distance / layer_scale if layer_scale > 0 else torch.zeros_like(distance)


def channel_similarity(batches: Iterable[torch.Tensor], criterion: str) -> torch.Tensor:
    """(C, C) similarity of a layer's channels from its maps, given as batches of (batch, C, H, W)."""
    accumulator = SimilarityAccumulator(criterion)
    for maps in batches:
        accumulator.add(maps)
    return accumulator.similarity()


@dataclass(frozen=True)
class Pair:
    similarity: float
    first: int
    second: int


def ranked_pairs(similarity: torch.Tensor, knn: int | None) -> list[Pair]:
    """Channel pairs (i < j), most similar first, from the KNN similarity matrix: S[i, j] = s_ij when j is among i's
    `knn` most similar channels, else 0; a pair is kept when either direction is non-zero. knn=None keeps all pairs.
    Ties break by channel index, so the order is deterministic."""
    channels = similarity.shape[0]
    if knn is not None and knn < 1:
        raise PrunedroidError(f"k (nearest neighbours) must be >= 1, got {knn}")
    neighbours = channels - 1 if knn is None else min(knn, channels - 1)
    scores = similarity.clone().fill_diagonal_(-1)
    chosen: set[tuple[int, int]] = set()
    for i in range(channels):
        # stable sort on -score: among equals, the lower index first
        order = torch.sort(-scores[i], stable=True).indices[:neighbours].tolist()
        chosen.update((min(i, j), max(i, j)) for j in order)
    pairs = [Pair(float(similarity[i, j]), i, j) for i, j in chosen]
    return sorted(pairs, key=lambda p: (-p.similarity, p.first, p.second))
