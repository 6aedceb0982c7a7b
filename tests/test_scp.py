import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunedroid import data as cifar
from prunedroid.errors import PrunedroidError
from prunedroid.pruned import example_input, prune_model
from prunedroid.pruning import Budget, LayerChannels, SCPConfig, kept_counts, scp
from prunedroid.pruning.l1 import filter_l1
from prunedroid.pruning.scp import (
    Cost,
    Reader,
    choose_removals,
    consumers_of,
    following_norms,
    map_grams,
    removal_costs,
)
from prunedroid.pruning.similarity import CRITERIA, Pair, channel_similarity, ranked_pairs
from prunedroid.training.train import remeasure_batchnorm
from tests.conftest import vgg_graph
from tests.test_prune import SMALL, conv_blocks, trained_like

IMAGES = torch.Generator().manual_seed(0)
EVAL = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=IMAGES)
EVAL_SET = cifar.Split(EVAL, torch.randint(0, 10, (64,), generator=IMAGES))


def with_copies(model: nn.Module, copies: dict[int, dict[int, tuple[int, float]]]) -> nn.Module:
    """Makes channel j of conv layer l produce `scale` x channel i's map: copies[l][j] = (i, scale). A ReLU commutes
    with a positive scale, so scaling the filter's BN weight and bias scales the map exactly."""
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for layer, targets in copies.items():
            conv, norm = convs[layer], norms[layer]
            for j, (i, scale) in targets.items():
                conv.weight[j] = conv.weight[i]
                for name in ("running_mean", "running_var"):
                    getattr(norm, name)[j] = getattr(norm, name)[i]
                norm.weight[j] = norm.weight[i] * scale
                norm.bias[j] = norm.bias[i] * scale
    return model


def calibrated(model: nn.Module) -> nn.Module:
    """BatchNorm statistics measured on EVAL, as training would leave them: no channel is silent on every image
    (silent channels are exact copies of each other, which would muddle tests about planted copies)."""
    return remeasure_batchnorm(model, EVAL, batch_size=len(EVAL))


def planted(seed: int, copies: dict[int, dict[int, tuple[int, float]]]) -> nn.Module:
    return with_copies(calibrated(trained_like(SMALL, seed)), copies)


COPIES = {0: {3: (1, 1.0)}, 2: {7: (2, 1.0), 9: (2, 1.0)}, 5: {0: (4, 1.0)}, 12: {8: (5, 1.0)}}


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("combine", ["lstsq", "sum"])
def test_exact_duplicates_are_found_removed_and_the_output_rebuilt(criterion, combine):
    model = planted(3, COPIES)
    config = SCPConfig(criterion=criterion, threshold=0.9999, combine=combine, recalibrate=False, eval_images=64,
                       batch_size=16)
    pruned, report = prune_model(model, config, None, evaluation=EVAL_SET)
    for row in report["layers"]:
        # Which of two exact copies goes is a coin toss (their losses are both 0); each group keeps exactly one.
        groups = {}
        for copy, (original, _) in COPIES.get(row["layer"], {}).items():
            groups.setdefault(original, {original}).add(copy)
        assert sorted(len(g & set(row["kept"])) for g in groups.values()) == [1] * len(groups)
        assert row["channels_after"] == row["channels_before"] - sum(len(g) - 1 for g in groups.values())
        for removed_channel, kept, factor in row["merges"]:
            assert any({removed_channel, kept} <= group for group in groups.values())
            assert factor == pytest.approx(1, abs=1e-4)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(pruned(x), model(x), atol=1e-5, rtol=0)
    assert all(row["pruning_loss"] < 1e-9 for row in report["layers"])


def test_least_squares_combination_rebuilds_scaled_copies_and_plain_sum_does_not():
    model = planted(4, {1: {5: (2, 2.5)}})  # map 5 = 2.5 x map 2: cosine 1
    outputs = {}
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for combine in ("lstsq", "sum", "none"):
        config = SCPConfig(threshold=0.9999, combine=combine, recalibrate=False, eval_images=64, batch_size=16)
        pruned, report = prune_model(model, config, None, evaluation=EVAL_SET)
        assert report["layers"][1]["channels_after"] == SMALL.conv_channels[1] - 1
        with torch.no_grad():
            outputs[combine] = (pruned(x) - model(x)).abs().max().item()
    assert outputs["lstsq"] < 1e-4 < min(outputs["sum"], outputs["none"])


def reference_similarity(maps: torch.Tensor, criterion: str) -> torch.Tensor:
    """The documented formulas applied pair by pair to whole flattened maps, in float64."""
    z = maps.double().transpose(0, 1).reshape(maps.shape[1], -1)
    channels, values = z.shape
    scale = {"euclidean": z.pow(2).mean().sqrt(), "manhattan": z.abs().mean(), "chebyshev": z.abs().max()}
    out = torch.empty(channels, channels, dtype=torch.float64)
    for i, j in itertools.product(range(channels), repeat=2):
        diff = z[i] - z[j]
        if criterion == "cosine":
            out[i, j] = max(0.0, float(z[i] @ z[j] / (z[i].norm() * z[j].norm())))
        else:
            distance = {"euclidean": diff.pow(2).mean().sqrt(), "manhattan": diff.abs().mean(),
                        "chebyshev": diff.abs().max()}[criterion]
            out[i, j] = 1 / (1 + distance / scale[criterion])
    return out


@pytest.mark.parametrize("criterion", CRITERIA)
def test_each_criterion_matches_a_direct_computation(criterion):
    generator = torch.Generator().manual_seed(5)
    maps = torch.relu(torch.randn(24, 7, 5, 5, generator=generator) + torch.randn(1, 7, 1, 1, generator=generator))
    maps[:, 6] = maps[:, 2] * 0.5 + 0.1 * maps[:, 6]  # one strongly related pair
    batched = channel_similarity(maps.split(5), criterion)  # uneven batches: accumulation must not care
    assert torch.allclose(batched, reference_similarity(maps, criterion), atol=1e-6)
    assert batched.diagonal().eq(1).all() and batched.ge(0).all() and batched.le(1).all()


def test_distance_similarity_does_not_depend_on_scale_or_evaluation_size():
    generator = torch.Generator().manual_seed(6)
    maps = torch.relu(torch.randn(40, 6, 4, 4, generator=generator))
    for criterion in ("euclidean", "manhattan"):
        base = channel_similarity([maps], criterion)
        assert torch.allclose(channel_similarity([maps * 1000], criterion), base, atol=1e-9)
        assert torch.allclose(channel_similarity([maps[:20]], criterion), base, atol=0.05)


def test_knn_matrix_keeps_each_channels_k_nearest():
    similarity = torch.tensor([[1.0, 0.9, 0.2, 0.1], [0.9, 1.0, 0.3, 0.2], [0.2, 0.3, 1.0, 0.8],
                               [0.1, 0.2, 0.8, 1.0]], dtype=torch.float64)
    assert [(p.first, p.second) for p in ranked_pairs(similarity, 1)] == [(0, 1), (2, 3)]
    assert [(p.first, p.second) for p in ranked_pairs(similarity, 2)] == [(0, 1), (2, 3), (1, 2), (0, 2), (1, 3)]
    assert len(ranked_pairs(similarity, None)) == 6


def fixed_costs(losses: dict[int, float]):
    """A cost where removing channel c always costs losses[c]."""
    return lambda i, j: {(i, j): Cost(losses[i], 1.0, losses[i]), (j, i): Cost(losses[j], 1.0, losses[j])}


def test_pruning_loss_decides_which_of_a_pair_goes_and_kept_channels_stay():
    pairs = [Pair(0.95, 0, 1), Pair(0.9, 1, 2), Pair(0.85, 0, 2), Pair(0.5, 3, 4)]
    removals = choose_removals(pairs, fixed_costs({0: 1.0, 1: 0.5, 2: 0.1, 3: 2.0, 4: 3.0}), threshold=0.8)
    # (0,1): 1 is cheaper and goes into 0; (1,2): 1 is gone; (0,2): 0 is kept already, so 2 goes; (3,4): not similar.
    assert [(r.merge.removed, r.merge.kept) for r in removals] == [(1, 0), (2, 0)]
    removals = choose_removals(pairs, fixed_costs({0: 1.0, 1: 0.5, 2: 0.1, 3: 2.0, 4: 3.0}), wanted=3)
    assert [(r.merge.removed, r.merge.kept) for r in removals] == [(1, 0), (2, 0), (3, 4)]


def test_keep_score_decides_which_of_a_pair_goes_and_the_pairs_stay_the_same():
    pairs = [Pair(0.95, 0, 1), Pair(0.9, 1, 2), Pair(0.85, 0, 2), Pair(0.5, 3, 4)]
    losses = fixed_costs({0: 1.0, 1: 0.5, 2: 0.1, 3: 2.0, 4: 3.0})
    # Norms favour 1 over 0 and 4 over 3, against the losses; the pruning loss is still what each removal records.
    removals = choose_removals(pairs, losses, wanted=3, keep_score=torch.tensor([1.0, 2.0, 0.5, 3.0, 0.2]))
    assert [(r.merge.removed, r.merge.kept) for r in removals] == [(0, 1), (2, 1), (4, 3)]
    assert [r.cost.loss for r in removals] == [1.0, 0.1, 3.0]


def test_keep_norm_keeps_the_larger_filter_of_every_pair():
    model = trained_like(SMALL, 8)
    norms = filter_l1(conv_blocks(model)[0][0])  # the first layer: no earlier fold edits its filters
    for keep in ("loss", "norm"):
        config = SCPConfig(keep=keep, eval_images=64, batch_size=16)
        report = prune_model(model, config, Budget.of(ratio=0.5), evaluation=EVAL_SET)[1]
        larger_kept = [bool(norms[kept] >= norms[removed]) for removed, kept, _ in report["layers"][0]["merges"]]
        assert all(larger_kept) if keep == "norm" else not all(larger_kept)


def test_merging_kept_channels_moves_their_group():
    pairs = [Pair(0.9, 0, 1), Pair(0.8, 2, 3), Pair(0.7, 0, 2)]
    removals = choose_removals(pairs, fixed_costs({0: 5.0, 1: 1.0, 2: 4.0, 3: 1.0}), wanted=3, merge_keepers=True)
    assert {(r.merge.removed, r.merge.kept) for r in removals} == {(1, 0), (3, 0), (2, 0)}


@pytest.mark.parametrize("centred", [False, True])
def test_a_pointwise_consumer_costs_pairs_from_the_shared_gram_matrix(centred):
    """A 1x1 consumer's pair statistics come from the maps' Gram matrix (map_grams), computed once for all pairs:
    the same costs as unfolding the two maps per pair."""
    generator = torch.Generator().manual_seed(3)
    maps = torch.relu(torch.randn(6, 5, 8, 8, generator=generator))
    readers = [Reader(torch.randn(4, 5, 1, 1, generator=generator), (0, 0))]
    shared = removal_costs([maps], readers, 1, 3, "lstsq", centred, 4, map_grams([maps], 4))
    unfolded = removal_costs([maps], readers, 1, 3, "lstsq", centred, 4)
    for key, cost in unfolded.items():
        assert shared[key].loss == pytest.approx(cost.loss, rel=1e-5)  # float32 sums in another order
        assert shared[key].factor == pytest.approx(cost.factor, rel=1e-5)


@pytest.mark.parametrize("centred", [False, True])
def test_pruning_loss_equals_the_consumer_output_error(centred):
    generator = torch.Generator().manual_seed(7)
    maps = torch.relu(torch.randn(6, 5, 8, 8, generator=generator)).double()
    weight = torch.randn(4, 5, 3, 3, generator=generator).double()
    costs = removal_costs([maps], [Reader(weight, (1, 1))], 1, 3, "lstsq", centred, batch_size=4)
    original = F.conv2d(maps, weight, padding=1)

    def change(removed: int, kept: int, factor: float) -> float:
        """By brute force: the mean squared output change after folding (less its mean per output channel when
        centred)."""
        edited = weight.clone()
        edited[:, kept] += factor * edited[:, removed]
        keep = [c for c in range(5) if c != removed]
        difference = F.conv2d(maps[:, keep], edited[:, keep], padding=1) - original
        if centred:
            difference = difference - difference.mean((0, 2, 3), keepdim=True)
        return difference.pow(2).mean().item()

    for (removed, kept), cost in costs.items():
        assert cost.loss == pytest.approx(change(removed, kept, cost.factor), rel=1e-6)
        assert cost.loss_dropped == pytest.approx(change(removed, kept, 0.0), rel=1e-6)
        for other in (cost.factor * 0.9, cost.factor * 1.1):  # the least-squares factor is the best one
            assert change(removed, kept, other) >= cost.loss * (1 - 1e-9)


def test_pruning_loss_after_batchnorm_equals_the_normalised_output_error():
    model = calibrated(trained_like(SMALL, 5)).eval()
    group, norms = vgg_graph(SMALL).groups[0], following_norms(model, example_input())
    with torch.no_grad():
        model.features[4].weight.mul_(torch.linspace(0.2, 3.0, model.features[4].num_features))  # uneven gains
        first, second = conv_blocks(model)[:2]
        maps = first(cifar.normalize(EVAL)).double()
        reference = second[:2].double()(maps)
    costs = removal_costs([maps], consumers_of(model, group, norms, [0], "bn"), 1, 3, "lstsq", False, 16)
    conv, norm = second[0].double(), second[1].double()
    for (removed, kept), cost in costs.items():
        edited = conv.weight.detach().clone()
        edited[:, kept] += cost.factor * edited[:, removed]
        keep = [c for c in range(maps.shape[1]) if c != removed]
        with torch.no_grad():
            output = norm(F.conv2d(maps[:, keep], edited[:, keep], conv.bias, padding=1))
        assert cost.loss == pytest.approx((output - reference).pow(2).mean().item(), rel=1e-6)
    plain = removal_costs([maps], consumers_of(model, group, norms, [0]), 1, 3, "lstsq", False, 16)
    assert all(plain[key].loss != pytest.approx(costs[key].loss, rel=1e-3) for key in costs)


def test_budget_mode_reaches_the_same_channel_counts_as_l1():
    model = trained_like(SMALL, 8)
    budget = Budget.of(mac_reduction=0.5)
    scp, scp_report = prune_model(model, SCPConfig(eval_images=64, batch_size=16), budget, evaluation=EVAL_SET)
    l1, _ = prune_model(model, "l1", budget)
    assert scp.spec.conv_channels == l1.spec.conv_channels
    assert abs(scp_report["mac_reduction"] - 0.5) <= 0.01
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert scp(x).shape == (2, 10)
    # Removing 80% of every layer needs more than pairs of free channels allow: kept channels merge too.
    deep = prune_model(model, SCPConfig(eval_images=64, batch_size=16), Budget.of(ratio=0.8), evaluation=EVAL_SET)[0]
    assert list(deep.spec.conv_channels) == kept_counts(vgg_graph(SMALL), Budget.of(ratio=0.8))


def test_a_group_the_budget_leaves_whole_is_not_read_and_keeps_its_weights(monkeypatch):
    # Sensitivity allocation cuts one group at a time: the other groups must cost nothing.
    model = trained_like(SMALL, 8)
    widths = list(vgg_graph(SMALL).channels)
    counts = tuple(width // 2 if layer == 4 else width for layer, width in enumerate(widths))
    read_groups = []
    real_read_maps = scp.read_maps
    monkeypatch.setattr(scp, "read_maps", lambda model, groups, batch: read_groups.extend(g.index for g in groups)
                        or real_read_maps(model, groups, batch))
    pruned, report = prune_model(model, SCPConfig(eval_images=64, batch_size=16), Budget(LayerChannels(counts)),
                                 evaluation=EVAL_SET)
    assert set(read_groups) == {4}
    assert [row["channels_after"] for row in report["layers"]] == list(counts)
    assert all(row["kept"] == list(range(widths[row["layer"]])) and row["knn_pairs"] == 0
               for row in report["layers"] if row["layer"] != 4)
    assert torch.equal(pruned.features[0].weight, model.features[0].weight)


def test_recalibration_measures_the_edited_layers_batchnorm_on_the_evaluation_set():
    model = planted(9, {3: {4: (1, 1.0)}})
    config = SCPConfig(threshold=0.9999, eval_images=64, batch_size=16)
    pruned, report = prune_model(model, config, None, evaluation=EVAL_SET)
    assert [row["layer"] for row in report["layers"] if row["merges"]] == [3]
    blocks, x = conv_blocks(pruned), cifar.normalize(EVAL)
    with torch.no_grad():
        for layer, block in enumerate(blocks):
            outputs = block[0](x)
            if layer == 4:  # the only layer whose input weights changed
                assert torch.allclose(block[1].running_mean, outputs.mean((0, 2, 3)), atol=1e-5)
                assert torch.allclose(block[1].running_var, outputs.var((0, 2, 3)), rtol=1e-4)
            x = block[1:](outputs)
    untouched = prune_model(model, SCPConfig(threshold=0.9999, recalibrate=False, eval_images=64, batch_size=16), None,
                      evaluation=EVAL_SET)[0]
    for layer in (0, 1, 2, 5, 6):  # other layers keep their trained statistics
        assert torch.equal(blocks[layer][1].running_var, conv_blocks(untouched)[layer][1].running_var)


@pytest.mark.parametrize("options, message", [
    (dict(threshold=1.5), "threshold must be in \\[0, 1\\]"), (dict(threshold=-0.1), "threshold must be in"),
    (dict(knn=0), "k \\(nearest neighbours\\) must be >= 1"), (dict(criterion="jaccard"), "unknown criterion"),
    (dict(combine="avg"), "unknown weight combination"), (dict(rank="size"), "unknown pair ranking"),
    (dict(loss_at="relu"), "unknown loss_at"), (dict(keep="centroid"), "unknown keep rule"),
    (dict(eval_images=100, batch_size=256), "smaller than one batch"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(PrunedroidError, match=message):
        SCPConfig(**options)


def test_bad_inputs_are_clear_errors():
    model = trained_like(SMALL)
    config = SCPConfig(threshold=0.9, eval_images=64, batch_size=64)
    few = prune_model(model, config, None, evaluation=EVAL_SET.head(10))[1]  # fewer than a batch: one batch
    assert few["method"] == "scp" and len(few["layers"]) == 13
    with pytest.raises(PrunedroidError, match="either `threshold` or a budget"):
        prune_model(model, config, Budget.of(ratio=0.5), evaluation=EVAL_SET)
    with pytest.raises(PrunedroidError, match="give calibration inputs"):
        prune_model(model, config, None)
