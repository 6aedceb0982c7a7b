import pytest
import torch
from torch import nn

from prunedroid import data as cifar
from prunedroid.errors import PrunedroidError
from prunedroid.flow import evaluation_set
from prunedroid.pruned import example_input, prune_model
from prunedroid.pruning import Budget, TorchPruningConfig, kept_counts, resolve_method
from prunedroid.pruning.torchpruning import library_scores
from tests.conftest import vgg_graph
from tests.test_prune import SMALL, trained_like

GENERATOR = torch.Generator().manual_seed(0)
EVAL_SET = cifar.Split(torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8, generator=GENERATOR),
                       torch.randint(0, 10, (48,), generator=GENERATOR))


def with_dead_channel(layer: int, channel: int) -> nn.Module:
    """Channel `channel` of conv `layer` is cut off from the network: nothing reads it (next layer's weights zero)
    and nothing makes it (filter and BatchNorm affine zero) - both criteria must rank it last."""
    model = trained_like(SMALL, 1)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        convs[layer].weight[channel] = 0
        norms[layer].weight[channel] = 0
        norms[layer].bias[channel] = 0
        convs[layer + 1].weight[:, channel] = 0
    return model


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_a_channel_nothing_uses_scores_lowest_and_goes(importance):
    model = with_dead_channel(3, 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TorchPruningConfig(importance=importance, eval_images=48, batch_size=16)
    labelled = [(cifar.normalize(EVAL_SET.images[start:start + 16]), EVAL_SET.labels[start:start + 16])
                for start in range(0, 48, 16)]
    scores = library_scores(model, vgg_graph(SMALL), example_input(), config, labelled)
    assert [len(s) for s in scores] == list(SMALL.conv_channels) and all(torch.isfinite(s).all() for s in scores)
    assert scores[3].argmin().item() == 5
    if importance == "taylor":
        assert scores[3][5].item() == 0  # no gradient reaches it
    pruned, report = prune_model(model, config, Budget.of(ratio=0.5), evaluation=EVAL_SET)
    assert [row["channels_after"] for row in report["layers"]] == kept_counts(vgg_graph(SMALL), Budget.of(ratio=0.5))
    assert 5 not in report["layers"][3]["kept"] and report["method"] == "torch-pruning"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model untouched
    assert all(p.grad is None for p in model.parameters())


def test_taylor_needs_labelled_images_and_magnitude_needs_none():
    holdout = cifar.Split(EVAL_SET.images.repeat(30, 1, 1, 1), EVAL_SET.labels.repeat(30))
    assert len(evaluation_set(TorchPruningConfig(importance="taylor"), holdout)) == 1024
    assert evaluation_set(TorchPruningConfig(), holdout) is None
    with pytest.raises(PrunedroidError, match="Taylor importance needs labelled calibration batches"):
        prune_model(trained_like(SMALL), TorchPruningConfig(importance="taylor"), Budget.of(ratio=0.5))


def test_library_options_resolve_or_explain():
    assert resolve_method("torch-pruning", {"importance": "taylor", "eval_images": "512"}, Budget.of(ratio=0.3)) == (
        TorchPruningConfig(importance="taylor", eval_images=512), Budget.of(ratio=0.3))
    for options, budget, message in [({"importance": "hessian"}, Budget.of(ratio=0.5), "unknown importance 'hessian'"),
                                     ({}, None, "torch-pruning needs a budget"),
                                     ({"knn": "3"}, Budget.of(ratio=0.5), "`knn` applies to `method` scp only")]:
        with pytest.raises(PrunedroidError, match=message):
            resolve_method("torch-pruning", options, budget)
