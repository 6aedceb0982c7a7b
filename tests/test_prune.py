import dataclasses
import math

import pytest
import torch
from torch import nn

from prunedroid.errors import PrunedroidError
from prunedroid.models import VGGSpec, build_model, vgg16_spec
from prunedroid.pruned import example_input, prune_checkpoint, prune_model
from prunedroid.pruning import Budget, kept_counts, prune_channels
from prunedroid.pruning.cost import count_cost
from prunedroid.pruning.l1 import l1_scores
from prunedroid.training.checkpoint import Checkpoint
from tests.conftest import vgg_graph

SMALL = VGGSpec(conv_channels=(6, 8, 10, 12, 9, 7, 11, 5, 6, 8, 7, 9, 10), hidden=12)


def trained_like(spec: VGGSpec, seed: int = 0) -> nn.Module:
    """A model in eval mode with non-trivial BatchNorm statistics, so a wrong slice shows in the output."""
    torch.manual_seed(seed)
    model = build_model(spec)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def conv_blocks(model: nn.Module) -> list[nn.Sequential]:
    """Per conv layer of a VGG, its conv -> BN -> ReLU (-> max-pool), sharing the model's modules: run in order on
    (N, 3, 32, 32) images, block l outputs the maps layer l + 1 (after the last, the classifier) reads."""
    starts = [i for i, module in enumerate(model.features) if isinstance(module, nn.Conv2d)]
    return [model.features[start:end] for start, end in zip(starts, starts[1:] + [len(model.features)])]


def zeroed(model: nn.Module, keep: dict[int, list[int]]) -> nn.Module:
    """The same network with every channel not kept silenced (BN weight and bias 0, so its ReLU output is 0)."""
    copy = build_model(model.spec)
    copy.load_state_dict(model.state_dict())
    norms = [m for m in copy.features if isinstance(m, nn.BatchNorm2d)]
    for layer, channels in keep.items():
        dropped = sorted(set(range(norms[layer].num_features)) - set(channels))
        norms[layer].weight.data[dropped] = 0
        norms[layer].bias.data[dropped] = 0
    return copy.eval()


@pytest.mark.parametrize("seed", range(5))
def test_surgery_equals_zeroing_the_removed_channels(seed):
    model = trained_like(SMALL, seed)
    generator = torch.Generator().manual_seed(seed)
    keep = {}
    for layer, channels in enumerate(SMALL.conv_channels):
        if torch.rand(1, generator=generator) < 0.7:  # some layers untouched
            count = int(torch.randint(1, channels + 1, (1,), generator=generator))
            keep[layer] = sorted(torch.randperm(channels, generator=generator)[:count].tolist())
    pruned = prune_channels(model, example_input(), keep)
    x = torch.randn(4, 3, 32, 32, generator=generator)
    with torch.no_grad():
        assert torch.allclose(pruned(x), zeroed(model, keep)(x), atol=1e-5)
    assert pruned.spec.conv_channels == tuple(len(keep.get(i, range(c))) for i, c in enumerate(SMALL.conv_channels))
    assert [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)] == list(pruned.spec.conv_channels)
    assert pruned.classifier[-1].out_features == 10  # the classifier's outputs are never pruned


def test_l1_removes_the_smallest_filters_and_matches_zeroing_them():
    model = trained_like(SMALL, 7)
    pruned, report = prune_model(model, "l1", Budget.of(ratio=0.5))
    scores = l1_scores(model, vgg_graph(SMALL))
    keep = {}
    for row in report["layers"]:
        kept, layer_scores = row["kept"], scores[row["layer"]]
        dropped = sorted(set(range(row["channels_before"])) - set(kept))
        assert len(kept) == max(1, row["channels_before"] - math.floor(row["channels_before"] * 0.5 + 0.5))
        if dropped:
            assert layer_scores[dropped].max() <= layer_scores[kept].min()
        keep[row["layer"]] = kept
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(pruned(x), zeroed(model, keep)(x), atol=1e-5)


def test_pruned_checkpoint_rebuilds_from_itself(tmp_path):
    model = trained_like(SMALL)
    base = Checkpoint(arch=SMALL.to_dict(), state_dict=model.state_dict(), recipe={"seed": 0},
                      metrics={"test": {"top1": 0.5}})
    pruned = prune_checkpoint(base, "l1", Budget.of(mac_reduction=0.5))
    pruned.save(tmp_path / "p.pt")
    rebuilt = Checkpoint.load(tmp_path / "p.pt").model().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), prune_model(model, "l1", Budget.of(mac_reduction=0.5))[0].eval()(x))
    assert pruned.pruning["parent_test_top1"] == 0.5 and pruned.cost["macs"] == count_cost(rebuilt).macs


@pytest.mark.parametrize("spec", [vgg16_spec(1.0), vgg16_spec(0.25), vgg16_spec(0.0625)],
                         ids=["full", "quick", "smoke"])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_mac_targets_are_reached_within_one_percent(spec, target):
    counts = kept_counts(vgg_graph(spec), Budget.of(mac_reduction=target))
    assert abs(vgg_graph(spec).mac_reduction(counts) - target) <= 0.01
    assert all(1 <= c <= o for c, o in zip(counts, spec.conv_channels))


def test_channel_graph_macs_equal_the_hook_count():
    for spec in (SMALL, vgg16_spec(0.5), VGGSpec(conv_channels=(3,) * 13, hidden=0)):
        graph = vgg_graph(spec)
        assert graph.macs() == count_cost(build_model(spec)).macs
        counts = [max(1, c // 3) for c in spec.conv_channels]
        narrower = build_model(dataclasses.replace(spec, conv_channels=tuple(counts)))
        assert graph.macs(counts) == count_cost(narrower).macs
    assert vgg_graph(vgg16_spec(1.0)).macs() == 313_463_808  # VGG16 on CIFAR-10 as the literature counts it


@pytest.mark.parametrize("budget, message", [
    (dict(ratio=1.2), "must be in \\(0, 1\\)"), (dict(mac_reduction=0.0), "must be in \\(0, 1\\)"),
    (dict(layer_ratios=(0.5,) * 12 + (1.0,)), "must be in \\[0, 1\\)"),
    (dict(), "exactly one budget"), (dict(ratio=0.5, mac_reduction=0.5), "exactly one budget"),
])
def test_bad_budgets_are_clear_errors(budget, message):
    with pytest.raises(PrunedroidError, match=message):
        Budget.of(**budget)


def test_unreachable_targets_and_bad_choices_are_errors():
    with pytest.raises(PrunedroidError, match="cannot be reached.*ask for less"):
        kept_counts(vgg_graph(vgg16_spec(0.25)), Budget.of(mac_reduction=0.999))
    with pytest.raises(PrunedroidError, match="13 values"):
        kept_counts(vgg_graph(vgg16_spec(0.25)), Budget.of(layer_ratios=(0.5, 0.5)))
    model = trained_like(SMALL)
    with pytest.raises(PrunedroidError, match="keep no channels"):
        prune_channels(model, example_input(), {0: []})
    with pytest.raises(PrunedroidError, match="distinct indices in 0..5"):
        prune_channels(model, example_input(), {0: [0, 6]})
    with pytest.raises(PrunedroidError, match="unknown pruning method"):
        prune_model(model, "magic", Budget.of(ratio=0.5))


def test_a_zero_layer_ratio_leaves_that_layer_whole_for_every_method(synthetic_data):
    """--layer-ratios 0,...,0 protects layers (the first and last convs, say); the others are pruned as asked."""
    from prunedroid.pruning import KMeansConfig, SCPConfig, TorchPruningConfig

    ratios = (0.0,) + (0.5,) * 11 + (0.0,)
    budget = Budget.of(layer_ratios=",".join(map(str, ratios)))
    model = trained_like(SMALL)
    evaluation = synthetic_data.holdout.head(128)
    for method in ("l1", "random", SCPConfig(eval_images=128, batch_size=64), KMeansConfig(),
                   TorchPruningConfig(), TorchPruningConfig(importance="taylor", eval_images=128, batch_size=64)):
        pruned, report = prune_model(model, method, budget, evaluation=evaluation)
        channels = pruned.spec.conv_channels
        assert channels[0] == SMALL.conv_channels[0] and channels[-1] == SMALL.conv_channels[-1], method
        assert channels == tuple(kept_counts(vgg_graph(SMALL), budget)) and channels[1] < SMALL.conv_channels[1], method


@pytest.mark.parametrize("options, message", [
    (dict(layer_ratios="0,0,0,0,0,0,0,0,0,0,0,0,0"), "nothing would be pruned"),
    (dict(layer_ratios="0.5,-0.1"), r"must be in \[0, 1\)"), (dict(ratio="nan"), "expects a finite number"),
    (dict(mac_reduction="inf"), "expects a finite number"), (dict(ratio="half"), "`ratio` expects a finite number"),
    (dict(ratio="0"), r"must be in \(0, 1\)"), (dict(mac_reduction="-0.5"), r"must be in \(0, 1\)"),
])
def test_bad_budget_options_are_clear_errors(options, message):
    with pytest.raises(PrunedroidError, match=message):
        Budget.of(**options)


@pytest.mark.parametrize("spec", [vgg16_spec(1.0), vgg16_spec(0.5), vgg16_spec(0.25)], ids=["full", "wide", "quick"])
@pytest.mark.parametrize("step", [4, 8, 16])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_rounded_counts_are_multiples_and_still_meet_the_mac_target(spec, step, target):
    counts = kept_counts(vgg_graph(spec), Budget.of(mac_reduction=target, round_to=step))
    assert abs(vgg_graph(spec).mac_reduction(counts) - target) <= 0.01
    assert all(c % step == 0 and step <= c <= o for c, o in zip(counts, spec.conv_channels)), counts


def test_rounding_applies_to_every_budget_and_method(synthetic_data):
    """The budget says how many (rounded), whichever method says which; a layer no wider than one step and a layer
    given ratio 0 stay whole."""
    from prunedroid.pruning import KMeansConfig, SCPConfig, TorchPruningConfig

    spec = vgg16_spec(0.125)  # 8..64 channels
    model = trained_like(spec)
    evaluation = synthetic_data.holdout.head(128)
    assert kept_counts(vgg_graph(spec), Budget.of(ratio=0.5, round_to=16))[:4] == [8, 8, 16, 16]
    assert kept_counts(vgg_graph(spec), Budget.of(layer_ratios=(0.5,) * 12 + (0.0,), round_to=8))[-1] == 64
    for method in ("l1", "random", SCPConfig(eval_images=128, batch_size=64), KMeansConfig(), TorchPruningConfig()):
        pruned, report = prune_model(model, method, Budget.of(mac_reduction=0.5, round_to=8), evaluation=evaluation)
        assert all(c % 8 == 0 for c in pruned.spec.conv_channels), (method, pruned.spec.conv_channels)
        assert abs(report["mac_reduction"] - 0.5) <= 0.01 and report["budget"]["round_to"] == 8


@pytest.mark.parametrize("round_to, message", [("0", "in 1..256"), ("300", "in 1..256"), ("8.5", "expects int")])
def test_bad_rounding_is_a_clear_error(round_to, message):
    with pytest.raises(PrunedroidError, match=message):
        Budget.of(mac_reduction="0.5", round_to=round_to)
    with pytest.raises(PrunedroidError, match="smaller `round_to`"):
        kept_counts(vgg_graph(vgg16_spec(0.25)), Budget.of(mac_reduction=0.95, round_to=16))
