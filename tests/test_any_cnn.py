"""Models nobody tuned the library for: concatenations, grouped convolutions, a module called twice, GroupNorm and
torchvision's classification models. Each either prunes to the MACs asked - counted independently by torch's
FlopCounterMode - with an exact cut, or is refused in one line naming the cause."""
import sys

import pytest
import torch
from conftest import ROOT
from torch import nn

import prunedroid
from prunedroid.errors import PrunedroidError
from prunedroid.pruning import channel_graph
from prunedroid.training.train import measure_batchnorm

sys.path.insert(0, str(ROOT / "benchmarks"))
from any_cnn import (  # noqa: E402
    ConcatBlock,
    FactorisedConvs,
    GroupedBlock,
    GroupNormNet,
    ReusedConv,
    exact_error,
    flop_macs,
    torchvision_model,
)


def calibrated(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """`model` with random BatchNorm gains and shifts and its statistics measured on `inputs` (so re-measuring them
    changes little), in eval mode."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    return measure_batchnorm(model, [inputs])


def concat_with_twins() -> tuple[nn.Module, torch.Tensor]:
    """ConcatBlock whose right branch (read at offset 6 of `merge`'s input) has channel 2 a copy of channel 3."""
    torch.manual_seed(0)
    model = ConcatBlock()
    with torch.no_grad():
        conv = model.right[0]
        conv.weight[2], conv.bias[2] = conv.weight[3], conv.bias[3]
    inputs = torch.randn(64, 3, 12, 12)
    model = calibrated(model, inputs)
    with torch.no_grad():
        norm = model.right[1]
        for tensor in (norm.weight, norm.bias, norm.running_mean, norm.running_var):
            tensor[2] = tensor[3]
    return model, inputs


def test_consumers_behind_a_concatenation_know_their_offset():
    model, inputs = concat_with_twins()
    graph = channel_graph(model, inputs[:1])
    right = next(group for group in graph.groups if group.producers == ("right.0",))
    assert [(c.module, c.offset) for c in right.consumers] == [("merge.0", 6)]
    assert graph.at(right, [8, 3, 6, 10]).consumers[0].offset == 3  # the left branch cut to 3 channels


@pytest.mark.parametrize("method", [prunedroid.pruning.SCPConfig(combine="sum", recalibrate=False, batch_size=64),
                                    prunedroid.pruning.SCPConfig(recalibrate=False, batch_size=64),
                                    prunedroid.pruning.KMeansConfig(combine="sum")],
                         ids=["scp-sum", "scp-lstsq", "kmeans-sum"])
def test_a_duplicate_channel_behind_a_concatenation_merges_into_its_twin(method):
    model, inputs = concat_with_twins()
    graph = channel_graph(model, inputs[:1])
    at = [group.producers for group in graph.groups].index(("right.0",))
    ratios = [0.0] * len(graph.groups)
    ratios[at] = 1 / 6
    result = prunedroid.prune(model, inputs[:1], method, calibration=[inputs], layer_ratios=ratios)
    row = result.report["layers"][at]
    assert row["kept"] == [0, 1, 2, 4, 5] or row["kept"] == [0, 1, 3, 4, 5]
    assert sorted(row["merges"][0][:2]) == [2, 3]
    with torch.no_grad():
        moved = (result.model(inputs) - model(inputs)).abs().max().item()
    assert moved < 1e-5


@pytest.mark.parametrize("method", ["l1", "kmeans", "scp", "torch-pruning"])
def test_half_the_macs_of_a_concatenating_model_go_exactly(method):
    torch.manual_seed(0)
    inputs = torch.randn(32, 3, 12, 12)
    model = calibrated(ConcatBlock(), inputs)
    options = {"kmeans": {"combine": "sum"}, "scp": {"recalibrate": False, "batch_size": 32}}.get(method, {})
    result = prunedroid.prune(model, inputs[:1], method, calibration=[inputs], mac_reduction=0.5, **options)
    reached = 1 - flop_macs(result.model, inputs[:1]) / flop_macs(model, inputs[:1])
    assert abs(reached - 0.5) <= 0.01
    assert exact_error(model, result.model, channel_graph(model, inputs[:1]), result.report["layers"], inputs) < 1e-4


@pytest.mark.parametrize("build", [ConcatBlock, ReusedConv, GroupedBlock, FactorisedConvs,
                                   torchvision_model("googlenet"), torchvision_model("regnet_x_400mf")],
                         ids=["concat", "reused", "grouped", "factorised", "googlenet", "regnet_x_400mf"])
def test_the_cost_model_counts_what_runs(build):
    """Every call of a reused module, a concatenation's full width, a grouped conv's groups, a 1x7 kernel: the graph's
    MACs are FlopCounterMode's, at full width and at other channel counts (DenseNet-121 too, in
    benchmarks/any_cnn.py: 20 s here)."""
    torch.manual_seed(0)
    model = build().eval()
    example = torch.randn(1, 3, 32, 32)
    graph = channel_graph(model, example)
    assert graph.macs() == flop_macs(model, example)
    if graph.groups:
        keep = {group.index: list(range(0, group.channels, 2)) for group in graph.groups}
        pruned = prunedroid.pruning.prune_channels(model, example, keep)
        assert graph.macs([len(kept) for kept in keep.values()]) == flop_macs(pruned, example)


def test_a_budget_grouped_convolutions_put_out_of_reach_is_refused_naming_them():
    model = GroupedBlock().eval()
    with pytest.raises(PrunedroidError, match=r"cannot be reached.*left whole and cannot shrink \(reduce\.0: read or "
                                              r"normalised by a grouped convolution"):
        prunedroid.prune(model, torch.zeros(1, 3, 16, 16), "l1", mac_reduction=0.5)
    result = prunedroid.prune(model, torch.zeros(1, 3, 16, 16), "l1", mac_reduction=0.3)
    assert [whole["convs"] for whole in result.report["left_whole"]] == [["reduce.0"], ["grouped.0"]]


def test_groupnorm_is_refused_with_the_real_reason():
    with pytest.raises(PrunedroidError, match=r"no channel group the library can prune: body\.0: read or normalised "
                                              r"by body\.1 \(GroupNorm\)"):
        prunedroid.prune(GroupNormNet(), torch.zeros(1, 3, 16, 16), "l1", mac_reduction=0.5)


def test_a_channel_shuffle_is_refused_in_one_line_naming_it():
    """Torch-Pruning's index mapping divides by zero on ShuffleNet's channel shuffle (reshape to groups, transpose,
    flatten): the whole model cannot be traced, and the error says why."""
    model = torchvision_model("shufflenet_v2_x1_0")().eval()
    with pytest.raises(PrunedroidError, match=r"cannot follow this model's channels through a reshape that splits "
                                              r"them into groups \(a channel shuffle"):
        prunedroid.prune(model, torch.zeros(1, 3, 32, 32), "l1", mac_reduction=0.5)


def test_a_rectangular_kernel_prunes_to_macs_but_is_not_timed():
    """MAC budgets count a 1x7 kernel; a latency table times square layers only, and says which layer is not."""
    torch.manual_seed(0)
    inputs = torch.randn(16, 3, 16, 16)
    model = calibrated(FactorisedConvs(), inputs)
    result = prunedroid.prune(model, inputs[:1], "l1", mac_reduction=0.5)
    assert abs(1 - flop_macs(result.model, inputs[:1]) / flop_macs(model, inputs[:1]) - 0.5) <= 0.01
    with pytest.raises(PrunedroidError, match=r"wide\.0: its kernel is \(1, 7\), its padding is \(0, 3\) \(not "
                                              r"square\), which a latency table cannot time; prune to a MAC budget"):
        channel_graph(model, inputs[:1]).layer_shapes()
