import pytest
import torch

from prunedroid.errors import PrunedroidError
from prunedroid.models import VGG16_CHANNELS, VGGSpec, build_model, vgg16_spec
from prunedroid.pruning.cost import count_cost


def analytic_vgg16_cost(channels, hidden=512, classes=10):
    """MACs/params of VGG16-BN from the layer list alone, independent of the hook-based counter."""
    macs, params, size, c_in = 0, 0, 32, 3
    for index, c_out in enumerate(channels):
        macs += size * size * c_out * c_in * 9
        params += c_out * c_in * 9 + 2 * c_out  # conv (no bias) + BN weight/bias
        if index in (1, 3, 6, 9, 12):
            size //= 2
        c_in = c_out
    macs += c_in * hidden + hidden * classes
    params += c_in * hidden + 2 * hidden + hidden * classes + classes
    return macs, params


def test_full_width_vgg16_matches_known_figures():
    cost = count_cost(build_model(vgg16_spec(1.0)))
    assert (cost.macs, cost.params) == analytic_vgg16_cost(VGG16_CHANNELS)
    # The figures the pruning literature quotes for VGG16 on CIFAR-10 (Li et al. 2017: 3.13e8 FLOPs, 15M params).
    assert cost.macs == pytest.approx(313.5e6, rel=0.005)
    assert cost.params == pytest.approx(15.0e6, rel=0.01)


def test_width_multiplier_scales_every_layer():
    spec = vgg16_spec(0.25)
    assert spec.conv_channels == tuple(c // 4 for c in VGG16_CHANNELS) and spec.hidden == 128
    cost = count_cost(build_model(spec))
    assert (cost.macs, cost.params) == analytic_vgg16_cost(spec.conv_channels, hidden=128)


def test_spec_round_trips_through_plain_data():
    spec = VGGSpec(conv_channels=(5, 7, 9, 11, 13, 3, 4, 6, 8, 10, 12, 2, 1), hidden=33)
    restored = VGGSpec.from_dict(spec.to_dict())
    assert restored == spec
    model = build_model(spec.to_dict())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert [m.out_channels for m in model.features if isinstance(m, torch.nn.Conv2d)] == list(spec.conv_channels)


@pytest.mark.parametrize("bad", [{"conv_channels": [4, 0]}, {"conv_channels": [4, 4], "pool_after": [5]},
                                 {"channels": [1]}])
def test_bad_architecture_descriptions_are_errors(bad):
    with pytest.raises(PrunedroidError):
        VGGSpec.from_dict({"pool_after": [1], **bad})


def test_cost_counter_restores_training_mode():
    model = build_model(vgg16_spec(0.0625)).train()
    count_cost(model)
    assert model.training


@pytest.fixture
def tinynet():
    """The documented example (docs/development.md, "Adding a model"), executed; unregistered afterwards."""
    from conftest import documented_example

    from prunedroid.models import MODELS

    yield documented_example("Adding a model")["TinyNet"]
    MODELS.pop("tinynet")


def test_a_model_registered_in_one_file_trains_prunes_and_rebuilds(tinynet, tmp_path, synthetic_data):
    from prunedroid.models import fresh_arch
    from prunedroid.pruned import prune_checkpoint
    from prunedroid.pruning import Budget
    from prunedroid.training.checkpoint import Checkpoint
    from prunedroid.training.train import make_config, train

    config = make_config("smoke", {"model": "tinynet", "train_limit": "256", "test_limit": "100"})
    assert config.epochs == 1 and config.model == "tinynet"  # its entry's change to the smoke preset
    train(config, synthetic_data, tmp_path, progress=False)
    base = Checkpoint.load(tmp_path / "checkpoint.pt")
    assert isinstance(base.model(), tinynet) and base.arch == fresh_arch("tinynet", config.width)
    pruned = prune_checkpoint(base, "l1", Budget.of(ratio=0.5))
    pruned.save(tmp_path / "pruned.pt")
    rebuilt = Checkpoint.load(tmp_path / "pruned.pt")
    assert rebuilt.arch["channels"] == [1, 2] and rebuilt.arch["name"] == "tinynet"  # width 0.0625: 2 and 4 channels
    images = torch.randn(4, 3, 32, 32)
    model, reference = rebuilt.model().eval(), pruned.model().eval()
    with torch.no_grad():
        assert torch.equal(model(images), reference(images))
