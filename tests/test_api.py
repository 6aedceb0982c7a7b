"""The public API on a CNN the package has never seen: the README's example, run as written, and every method on a
small residual network with a depthwise block and a flatten into its classifier (defined here, not in the package)."""
import re

import pytest
import torch
from conftest import ROOT
from torch import nn

import prunedroid


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class TinyResNet(nn.Module):
    """stem -> residual block (the stem's channels and the block's second conv's are one group) -> inverted
    bottleneck with a depthwise conv (its input and output one group) -> pooled 4x4 map flattened into a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block = Residual(16)
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                    nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32, bias=False),
                                    nn.BatchNorm2d(32), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(32, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.head = nn.Linear(24 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(self.expand(self.block(self.stem(x))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 4), 1))


def model_and_data(seed: int = 0) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A TinyResNet with measured BatchNorm statistics and two labelled batches of held-out inputs."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyResNet()
    held_out = [(torch.randn(64, 3, 32, 32, generator=generator), torch.randint(0, 10, (64,), generator=generator))
                for _ in range(2)]
    with torch.no_grad():
        model.train()(held_out[0][0])  # BatchNorm statistics that are not the identity
    return model.eval(), held_out


def readme_example() -> str:
    section = (ROOT / "README.md").read_text().split("## Your own CNN, from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, capsys):
    model, held_out = model_and_data()
    monkeypatch.chdir(tmp_path)
    exec(readme_example(), {"MyCNN": lambda: model, "held_out": held_out})
    printed = capsys.readouterr().out
    assert re.match(r"(49|50)\.\d% fewer MACs \[", printed), printed
    sidecar = (tmp_path / "export" / "mycnn.json").read_text()
    assert all((tmp_path / "export" / f"mycnn.{kind}").stat().st_size > 0 for kind in ("pte", "ptl", "onnx"))
    assert '"executorch": {' in sidecar and '"top1_agreement": 1.0' in sidecar


def test_the_groups_follow_additions_depthwise_convs_and_the_flatten():
    model, _ = model_and_data()
    groups = prunedroid.pruning.channel_graph(model, torch.zeros(1, 3, 32, 32)).groups
    assert [group.producers for group in groups] == [("stem.0", "block.body.3"), ("block.body.0",),
                                                     ("expand.0", "expand.3"), ("project.0",)]
    assert [(c.module, c.repeat) for c in groups[0].consumers] == [("block.body.0", 1), ("expand.0", 1)]
    assert [(c.module, c.repeat) for c in groups[3].consumers] == [("head", 16)]


METHODS = [("l1", {}), ("random", {}), ("scp", {"batch_size": 32}), ("scp", {"batch_size": 32, "combine": "sum"}),
           ("kmeans", {}), ("kmeans", {"combine": "sum"}), ("torch-pruning", {}),
           ("torch-pruning", {"importance": "taylor"})]


@pytest.mark.parametrize("allocation", ["uniform", "global", "sensitivity"])
@pytest.mark.parametrize("method, options", METHODS, ids=[f"{m}-{'-'.join(map(str, o.values()))}" for m, o in METHODS])
def test_every_method_prunes_a_residual_cnn_to_the_mac_target(method, options, allocation):
    model, held_out = model_and_data()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    x = held_out[1][0]
    with torch.no_grad():
        reference = model(x)
    agreement = lambda pruned: 100 * float((pruned(x).argmax(1) == reference.argmax(1)).float().mean())
    result = prunedroid.prune(model, torch.zeros(1, 3, 32, 32), method, mac_reduction=0.5, allocation=allocation,
                              calibration=held_out, evaluate=agreement, **options)
    assert abs(result.report["mac_reduction"] - 0.5) <= 0.01
    with torch.no_grad():
        assert result.model(x).shape == (64, 10)
    counts = [row["channels_after"] for row in result.report["layers"]]
    assert counts != [16, 16, 32, 24] and all(1 <= c for c in counts)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's model untouched


def test_a_model_with_nothing_to_prune_and_bad_options_are_clear_errors():
    from prunedroid.errors import PrunedroidError

    model, _ = model_and_data()
    with pytest.raises(PrunedroidError, match=r"no channel group the library can prune: 0: not read by any layer \(the "
                                              r"model's output\)"):
        prunedroid.prune(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), torch.zeros(1, 3, 8, 8), "l1",
                         mac_reduction=0.5)
    with pytest.raises(PrunedroidError, match=r"0: read or normalised by 1 \(GroupNorm\), which the library does "
                                              r"not cut"):
        prunedroid.prune(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Conv2d(4, 4, 3), nn.GroupNorm(2, 4),
                                       nn.Flatten()), torch.zeros(1, 3, 8, 8), "l1", mac_reduction=0.1)
    with pytest.raises(PrunedroidError, match="unknown scp options: radius"):
        prunedroid.prune(model, torch.zeros(1, 3, 32, 32), "scp", mac_reduction=0.5, radius=3)
    with pytest.raises(PrunedroidError, match="unknown pruning method 'magic'"):
        prunedroid.prune(model, torch.zeros(1, 3, 32, 32), "magic", mac_reduction=0.5)
    with pytest.raises(PrunedroidError, match="could not trace the model"):
        prunedroid.prune(model, torch.zeros(1, 5, 32, 32), "l1", mac_reduction=0.5)
    with pytest.raises(PrunedroidError, match="measures accuracy: give `evaluate`"):
        prunedroid.prune(model, torch.zeros(1, 3, 32, 32), "l1", mac_reduction=0.5, allocation="sensitivity")


def test_export_names_stay_in_their_folder(tmp_path):
    from prunedroid.errors import PrunedroidError

    model, _ = model_and_data()
    (tmp_path / "out").mkdir()
    for name in ("../escaped", "/etc/passwd", ".hidden", "a/b"):
        with pytest.raises(PrunedroidError, match="plain name"):
            prunedroid.export(model, torch.zeros(1, 3, 32, 32), tmp_path / "out", name)
    assert list(tmp_path.rglob("*")) == [tmp_path / "out"]


class _GroupNormBlock(nn.Module):
    """A conv normalised by GroupNorm (channels the library does not cut) between prunable ones."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.norm = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8)
        self.middle, self.bn = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.head, self.fc = nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.middle(self.norm(self.stem(x)).relu())
        return self.fc(self.head(self.bn(x).relu()).mean((2, 3)))


def test_channels_left_whole_are_named_with_the_reason():
    result = prunedroid.prune(_GroupNormBlock().eval(), torch.zeros(1, 3, 8, 8), "l1", ratio=0.5)
    assert result.report["groups"] == [["middle"], ["head"]]
    assert result.report["left_whole"] == [
        {"convs": ["stem"], "reason": "read or normalised by norm (GroupNorm), which the library does not cut"}]
    assert (result.model.stem.out_channels, result.model.middle.out_channels, result.model.head.out_channels) == \
        (8, 8, 8)
