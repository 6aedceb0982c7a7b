import json

import pytest
import torch
from torch import nn

from prunedroid import data as cifar
from prunedroid.errors import PrunedroidError
from prunedroid.models import arch_of, build_model, example_input, new_model, vgg16_spec
from prunedroid.pruned import cached, prune_model
from prunedroid.pruning import Budget, KMeansConfig, SCPConfig, TorchPruningConfig, prune
from prunedroid.pruning.allocation import floors, global_counts, predicted_loss, sensitivity_counts
from prunedroid.training.train import remeasure_batchnorm
from tests.conftest import vgg_graph
from tests.test_prune import SMALL, conv_blocks, trained_like

TINY = vgg16_spec(0.125)  # 8..64 channels


def self_labelled(model: nn.Module, images: torch.Tensor) -> cifar.Split:
    """Images labelled by the model itself: it scores 100%, so any top-1 it loses is what pruning cost."""
    with torch.no_grad():
        return cifar.Split(images, model(cifar.normalize(images)).argmax(1))


@pytest.mark.parametrize("allocation", ["global", "sensitivity", "search"])
def test_every_method_meets_the_mac_target_above_the_floor(synthetic_data, allocation):
    """The allocation says how many channels per layer, the method which; rounding and the floor hold for all."""
    model = trained_like(SMALL)
    holdout = synthetic_data.holdout.head(48)
    evaluation = holdout.head(32)
    budget = Budget.of(mac_reduction=0.5, allocation=allocation, min_keep=0.3,
                       **({"candidates": 3} if allocation == "search" else {}))
    lowest = floors(vgg_graph(SMALL), budget)
    for method in ("l1", "random", SCPConfig(eval_images=32, batch_size=32), KMeansConfig(restarts=1),
                   TorchPruningConfig(), TorchPruningConfig(importance="taylor", eval_images=32, batch_size=32)):
        pruned, report = prune_model(model, method, budget, evaluation=evaluation, holdout=holdout)
        channels = pruned.spec.conv_channels
        assert abs(report["mac_reduction"] - 0.5) <= 0.01, (method, channels)
        assert all(low <= c for low, c in zip(lowest, channels)), (method, channels, lowest)
        assert report["allocation"] == allocation and report["budget"]["min_keep"] == 0.3
        assert ("curves" in report) == (allocation == "sensitivity")
        if allocation == "search":  # the candidate kept is the one cut, and scored best on the held-out images
            best = report["candidates"][report["chosen"]]
            assert list(channels) == best["channels"] and len(report["candidates"]) == 3
            assert best["score"] == max(candidate["score"] for candidate in report["candidates"])


@pytest.mark.parametrize("allocation", ["global", "sensitivity"])
def test_rounded_allocations_keep_multiples_of_the_step(synthetic_data, allocation):
    model = trained_like(TINY)
    budget = Budget.of(mac_reduction=0.6, allocation=allocation, round_to=8)
    pruned, report = prune_model(model, "l1", budget, holdout=synthetic_data.holdout.head(64))
    assert all(c % 8 == 0 for c in pruned.spec.conv_channels), pruned.spec.conv_channels
    assert abs(report["mac_reduction"] - 0.6) <= 0.01


def test_floors_are_the_min_keep_share_rounded_up_to_the_step():
    assert floors(vgg_graph(TINY), Budget.of(mac_reduction=0.5, allocation="global", min_keep=0.1)) == [
        1, 1, 2, 2, 4, 4, 4, 7, 7, 7, 7, 7, 7]
    assert floors(vgg_graph(TINY), Budget.of(mac_reduction=0.5, allocation="global", min_keep=0.1, round_to=8)) == [
        8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8]
    with pytest.raises(PrunedroidError, match="lower `min_keep`"):
        global_counts(vgg_graph(TINY), Budget.of(mac_reduction=0.8, allocation="global", min_keep=0.6),
                      [torch.ones(c) for c in TINY.conv_channels])


def test_global_ranks_channels_across_layers_after_normalising_each_layer():
    """Layer 4 has half its channels scoring near zero against its own mean; layer 5's are all alike, so under
    the same MAC target layer 4 loses its weak half first and layer 5 keeps more."""
    scores = [torch.ones(c) for c in TINY.conv_channels]
    scores[4] = torch.cat([torch.full((16,), 10.0), torch.full((16,), 0.01)])
    scores[5] = torch.full((32,), 1000.0)  # a layer's scale alone decides nothing
    counts = global_counts(vgg_graph(TINY), Budget.of(mac_reduction=0.15, allocation="global"), scores)
    assert counts[4] <= 16 < counts[5]
    assert abs(vgg_graph(TINY).mac_reduction(counts) - 0.15) <= 0.01


def test_predicted_loss_interpolates_and_extends_the_last_slope():
    curve = [(32, 0.0), (24, 1.0), (16, 5.0)]
    assert predicted_loss(curve, 32) == 0.0 and predicted_loss(curve, 28) == 0.5
    assert predicted_loss(curve, 20) == 3.0 and predicted_loss(curve, 12) == 7.0


def test_sensitivity_prunes_the_layer_whose_measured_loss_is_flat_first():
    flat = lambda c: [(c, 0.0), (c // 2, 0.0), (c // 4, 0.1)]
    steep = lambda c: [(c, 0.0), (c - 1, 20.0), (c // 4, 60.0)]
    curves = [steep(c) for c in TINY.conv_channels]
    curves[2] = flat(TINY.conv_channels[2])
    budget = Budget.of(mac_reduction=0.1, allocation="sensitivity", min_keep=0.25)
    counts = sensitivity_counts(vgg_graph(TINY), budget, curves)
    assert counts[2] < TINY.conv_channels[2] and counts[3] == TINY.conv_channels[3]


def test_sensitivity_on_a_planted_model_prunes_the_redundant_layer_more(synthetic_data):
    """Layer 5 (32 channels) carries half its channels dead; layer 6 (32 channels, the same MACs) uses all of
    them. Measured on held-out images the model labels itself, the redundant layer is pruned further."""
    model = trained_like(TINY, seed=1)
    dead = list(range(16, 32))
    with torch.no_grad():
        block = conv_blocks(model)[5]
        block[0].weight[dead] = 0
        block[1].weight[dead] = 0
        block[1].bias[dead] = 0
        for module in model.modules():  # deep, narrow random layers lose the signal; keep it alive
            if isinstance(module, nn.BatchNorm2d):
                module.bias.abs_()
    images = synthetic_data.holdout.images[:384]
    model = remeasure_batchnorm(model, images[:128])
    holdout = self_labelled(model, images)
    budget = Budget.of(mac_reduction=0.1, allocation="sensitivity", min_keep=0.25)
    pruned, report = prune_model(model, "l1", budget, holdout=holdout)
    curves = report["curves"]
    assert curves[5][1][1] == 0.0 and curves[5][2][1] == 0.0  # 25% and 50% of layer 5 cost nothing: they were dead
    assert curves[6][2][1] > 0
    channels = pruned.spec.conv_channels
    assert channels[5] < channels[6], channels


def test_sensitivity_needs_held_out_images():
    with pytest.raises(PrunedroidError, match="held-out training images"):
        prune_model(trained_like(SMALL), "l1", Budget.of(mac_reduction=0.5, allocation="sensitivity"))


def test_measurements_are_cached_per_key(tmp_path):
    cache = tmp_path / "curves.json"
    measured = [[[8, 0.0], [4, 1.5]]]
    assert cached(cache, "l1", lambda: measured) == measured
    assert cached(cache, "l1", lambda: pytest.fail("measured twice")) == measured
    assert cached(cache, "scp", lambda: [[[8, 0.0], [4, 0.5]]]) == [[[8, 0.0], [4, 0.5]]]
    assert cached(cache, "search candidate", lambda: 61.25) == 61.25
    assert set(json.loads(cache.read_text())) == {"l1", "scp", "search candidate"}


def test_two_runs_sharing_a_curve_cache_keep_each_others_curves(tmp_path):
    """Two benchmarks measuring different methods' curves into one cache at once: the one that finishes second
    must not write back the cache as it read it before measuring."""
    cache = tmp_path / "curves.json"

    def slow_scp_curves():
        cached(cache, "tp-group-norm", lambda: [[[8, 0.0], [4, 2.0]]])  # the other run finishes meanwhile
        return [[[8, 0.0], [4, 0.5]]]

    cached(cache, "scp", slow_scp_curves)
    assert set(json.loads(cache.read_text())) == {"scp", "tp-group-norm"}


@pytest.mark.parametrize("options, message", [
    (dict(ratio=0.5, allocation="global"), "give `mac_reduction`"),
    (dict(mac_reduction=0.5, allocation="best"), "unknown `allocation`"),
    (dict(mac_reduction=0.5, allocation="global", min_keep=1.5), r"in \(0, 1\]"),
])
def test_bad_allocation_budgets_are_clear_errors(options, message):
    with pytest.raises(PrunedroidError, match=message):
        Budget.of(**options)


def test_prune_from_the_command_line_with_an_allocation(tmp_path, cifar_dir):
    from tests.conftest import run_invoke, save_untrained_base

    base = save_untrained_base(tmp_path / "base.pt")
    out = tmp_path / "pruned"
    result = run_invoke("prune", "--checkpoint", str(base), "--mac-reduction", "0.3", "--allocation", "sensitivity",
                        "--min-keep", "0.25", "--round-to", "2", "--data-dir", str(cifar_dir), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["allocation"] == "sensitivity" and len(report["curves"]) == 13
    assert report["budget"] == {"mac_reduction": 0.3, "tolerance": 0.01, "round_to": 2, "allocation": "sensitivity",
                                "min_keep": 0.25}
    assert abs(report["mac_reduction"] - 0.3) <= 0.01
    assert all(row["channels_after"] % 2 == 0 for row in report["layers"])


def first_conv_width(model: nn.Module) -> float:
    """A stand-in for held-out accuracy that prefers keeping the first conv's channels (and is instant)."""
    return float(next(m for m in model.modules() if isinstance(m, nn.Conv2d)).out_channels)


def test_search_keeps_the_best_candidate_is_seeded_and_resumes():
    model, example = trained_like(TINY), torch.zeros(1, 3, 32, 32)
    budget = Budget.of(mac_reduction=0.5, allocation="search", candidates=6, min_keep=0.2)
    stored: dict = {}

    def remember(key, measure):
        if key not in stored:
            stored[key] = measure()
        return stored[key]

    result = prune(model, example, "l1", budget, evaluate=first_conv_width, remember=remember)
    candidates = result.report["candidates"]
    assert len(candidates) == 6 and len({tuple(c["channels"]) for c in candidates}) == 6
    graph = vgg_graph(TINY)
    assert all(abs(graph.mac_reduction(c["channels"]) - 0.5) <= 0.01 for c in candidates)
    assert all(c["score"] == c["channels"][0] for c in candidates)  # each scored as pruned to its own counts
    best = max(c["channels"][0] for c in candidates)
    assert result.report["chosen"] == next(i for i, c in enumerate(candidates) if c["channels"][0] == best)
    assert result.model.spec.conv_channels[0] == best
    # the first candidate weighs every group alike: each keeps about the same share, as a uniform cut would
    shares = [kept / full for kept, full in zip(candidates[0]["channels"], TINY.conv_channels)]
    assert max(shares) - min(shares) < 0.3, shares
    # the same seed draws the same candidates, and a search resumes from what was scored (nothing is measured again)
    again = prune(model, example, "l1", budget, evaluate=lambda m: pytest.fail("scored again"), remember=remember)
    assert again.report["candidates"] == candidates
    other = prune(model, example, "l1", budget, seed=1, evaluate=first_conv_width)
    assert [c["channels"] for c in other.report["candidates"]] != [c["channels"] for c in candidates]


def test_search_works_on_a_residual_network_and_through_a_checkpoint(synthetic_data):
    """ResNet-56's groups couple each stage's residual channels; every candidate respects them."""
    model = new_model("resnet56", width=0.25)
    result = prune(model, example_input("resnet56"), "l1", mac_reduction=0.4, allocation="search", candidates=3,
                   evaluate=first_conv_width)
    assert len(result.report["candidates"]) == 3
    assert abs(result.report["mac_reduction"] - 0.4) <= 0.01
    assert build_model(arch_of(result.model))(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("options, message", [
    ({"mac_reduction": 0.5, "allocation": "search", "candidates": 0}, "`candidates` must be a whole number"),
    ({"ratio": 0.5, "allocation": "search"}, "shares a MAC target"),
])
def test_a_search_without_a_mac_target_or_candidates_is_refused(options, message):
    with pytest.raises(PrunedroidError, match=message):
        Budget.of(**options)


def test_a_search_needs_held_out_images():
    with pytest.raises(PrunedroidError, match="held-out training images"):
        prune_model(trained_like(SMALL), "l1", Budget.of(mac_reduction=0.5, allocation="search"))


def test_a_candidate_stranded_between_steps_is_skipped_but_an_unreachable_target_is_refused(monkeypatch):
    """Weights that leave every remaining step past the tolerance give no candidate (others are drawn); when even
    the evenly weighted first candidate cannot reach the target, the search refuses as every allocation does."""
    import prunedroid.pruning.allocation as allocation

    graph, budget = vgg_graph(TINY), Budget.of(mac_reduction=0.5, allocation="search", candidates=4)
    reach = allocation.trim_to_target
    calls = []

    def stranded(*args, **kwargs):
        raise PrunedroidError("could not reach a 50.0% MAC reduction within 1.0%")

    def every_second_stranded(*args, **kwargs):
        calls.append(len(calls))
        return (stranded if len(calls) % 2 == 0 else reach)(*args, **kwargs)

    monkeypatch.setattr(allocation, "trim_to_target", every_second_stranded)
    assert len(allocation.search_candidates(graph, budget, seed=0)) == 4 and len(calls) >= 7
    monkeypatch.setattr(allocation, "trim_to_target", stranded)
    with pytest.raises(PrunedroidError, match="could not reach"):
        allocation.search_candidates(graph, budget, seed=0)
