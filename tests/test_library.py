import pytest
import torch
from torch import nn

from pipeline import data as cifar
from pipeline.errors import PipelineError
from pipeline.flow import evaluation_set
from pipeline.prune import Budget, LibraryConfig, kept_counts, prune, resolve_method
from pipeline.prune.library import library_scores
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
    config = LibraryConfig(importance=importance, eval_images=48, batch_size=16)
    scores = library_scores(model, config, EVAL_SET)
    assert [len(s) for s in scores] == list(SMALL.conv_channels) and all(torch.isfinite(s).all() for s in scores)
    assert scores[3].argmin().item() == 5
    if importance == "taylor":
        assert scores[3][5].item() == 0  # no gradient reaches it
    pruned, report = prune(model, config, Budget(ratio=0.5), evaluation=EVAL_SET)
    assert [row["channels_after"] for row in report["layers"]] == kept_counts(SMALL, Budget(ratio=0.5))
    assert 5 not in report["layers"][3]["kept"] and report["method"] == "torch-pruning"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model untouched
    assert all(p.grad is None for p in model.parameters())


def test_taylor_needs_labelled_images_and_magnitude_needs_none():
    holdout = cifar.Split(EVAL_SET.images.repeat(30, 1, 1, 1), EVAL_SET.labels.repeat(30))
    assert len(evaluation_set(LibraryConfig(importance="taylor"), holdout)) == 1024
    assert evaluation_set(LibraryConfig(), holdout) is None
    with pytest.raises(PipelineError, match="Taylor importance needs labelled evaluation images"):
        prune(trained_like(SMALL), LibraryConfig(importance="taylor"), Budget(ratio=0.5))


def test_library_options_resolve_or_explain():
    assert resolve_method("torch-pruning", {"importance": "taylor", "eval_images": "512"}, Budget(ratio=0.3)) == (
        LibraryConfig(importance="taylor", eval_images=512), Budget(ratio=0.3))
    for options, budget, message in [({"importance": "hessian"}, Budget(ratio=0.5), "unknown importance 'hessian'"),
                                     ({}, None, "torch-pruning needs a budget"),
                                     ({"knn": "3"}, Budget(ratio=0.5), "--knn applies to --method scp only")]:
        with pytest.raises(PipelineError, match=message):
            resolve_method("torch-pruning", options, budget)
