"""The registered architectures beyond VGG16: ResNet-56 (residual additions tie channels across a stage) and
MobileNetV2 (depthwise convs carry a group through; residual inverted blocks), from the registry's records to the
whole pipeline."""
import json

import pytest
import torch
from conftest import run_invoke

from prunedroid.errors import PrunedroidError
from prunedroid.models import ModelConfig, arch_of, build_model, new_model
from prunedroid.pruning import channel_graph, prune
from prunedroid.pruning.cost import count_cost
from prunedroid.training.checkpoint import Checkpoint


def test_the_literature_sizes():
    """ResNet-56 on CIFAR-10 is 125M MACs and 0.85M parameters as the pruning papers count it (He et al.; HRank;
    DepGraph); the CIFAR MobileNetV2 (stride-1 stem and second stage) 88M MACs and 2.24M parameters."""
    resnet, mobilenet = count_cost(new_model("resnet56")), count_cost(new_model("mobilenetv2"))
    assert (round(resnet.macs / 1e6), round(resnet.params / 1e4)) == (126, 86)
    assert (round(mobilenet.macs / 1e6), round(mobilenet.params / 1e4)) == (88, 224)
    groups = channel_graph(new_model("resnet56"), torch.zeros(1, 3, 32, 32)).groups
    assert len(groups) == 27 + 3  # one inside each basic block, one residual stream per stage
    assert sorted(len(g.producers) for g in groups)[-3:] == [10, 10, 10]  # 9 blocks + the stem or the shortcut


@pytest.mark.parametrize("name", ["resnet56", "mobilenetv2"])
@pytest.mark.parametrize("allocation", ["uniform", "sensitivity"])
def test_a_pruned_model_rebuilds_from_its_record(name, allocation, tmp_path):
    """Sensitivity allocation measures a curve per coupled group (a residual stream, an expansion through its
    depthwise conv) - here against agreement with the unpruned model on a few random images."""
    torch.manual_seed(0)
    model = new_model(name, width=0.25).eval()
    images = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        labels = model(images).argmax(1)

    def agreement(candidate: torch.nn.Module) -> float:
        with torch.no_grad():
            return 100 * (candidate.eval()(images).argmax(1) == labels).float().mean().item()

    result = prune(model, torch.zeros(1, 3, 32, 32), "l1", mac_reduction=0.5, allocation=allocation,
                   evaluate=agreement)
    pruned = result.model
    assert abs(result.report["mac_reduction"] - 0.5) <= 0.01
    assert ("curves" in result.report) == (allocation == "sensitivity")
    record = arch_of(pruned)
    assert record["name"] == name and record["channels"] != arch_of(model)["channels"]
    Checkpoint(arch=record, state_dict=pruned.state_dict()).save(tmp_path / "c.pt")
    rebuilt = Checkpoint.load(tmp_path / "c.pt").model().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), pruned.eval()(x))
    assert count_cost(rebuilt).macs == count_cost(pruned).macs


@pytest.mark.parametrize("arch, message", [
    ({"name": "resnet1000", "width": 1.0, "num_classes": 10}, "unknown model 'resnet1000'"),
    ({"name": "resnet56", "width": 1e9, "num_classes": 10}, "width must be in"),
    ({"name": "resnet56", "width": float("nan"), "num_classes": 10}, "width must be in"),
    ({"name": "resnet56", "width": 1.0, "num_classes": 10 ** 9}, "num_classes must be"),
    ({"name": "resnet56", "width": 1.0, "num_classes": 10, "channels": [4] * 29}, "do not fit a model"),
    ({"name": "resnet56", "width": 1.0, "num_classes": 10, "channels": [0.5] * 30}, "whole number >= 1"),
    ({"name": "resnet56", "width": 1.0}, "not an architecture description"),
])
def test_hostile_records_are_refused_before_building(arch, message):
    with pytest.raises(PrunedroidError, match=message):
        build_model(arch)


def test_each_model_has_its_own_quick_preset():
    from prunedroid.training.train import make_config

    resnet, mobilenet, vgg = (make_config("quick", {"model": name}) for name in ("resnet56", "mobilenetv2", None))
    assert (resnet.model, resnet.width, resnet.epochs) == ("resnet56", 0.5, 12)
    assert (mobilenet.width, mobilenet.epochs, vgg.model, vgg.width) == (0.5, 7, "vgg16", 0.25)
    assert make_config("quick", {"model": "resnet56", "width": "1"}).width == 1.0  # an option still overrides it
    assert make_config("quick", {"model": "resnet56"}, finetune=True).epochs == 3  # the fine-tune's own schedule


def test_weights_that_do_not_fit_the_record_are_refused(tmp_path):
    small, large = new_model("resnet56", 0.125), new_model("resnet56", 0.25)
    Checkpoint(arch=arch_of(large), state_dict=small.state_dict()).save(tmp_path / "c.pt")
    with pytest.raises(PrunedroidError, match="do not match its architecture"):
        Checkpoint.load(tmp_path / "c.pt").model()
    assert ModelConfig.from_dict(arch_of(small)).width == 0.125
    assert count_cost(build_model(ModelConfig("resnet56", 0.125))).macs == count_cost(small).macs



def run_the_pipeline(tmp_path, cifar_dir, model, method, *method_options):
    """`invoke pipeline --preset smoke --model <model>`: the pruned checkpoint rebuilds from its record, every export
    format passes its check and is benchmarked."""
    runs = tmp_path / "runs"
    result = run_invoke("pipeline", "--preset", "smoke", "--model", model, "--name", model, "--data-dir",
                        str(cifar_dir), "--bench-runs", "10", "--bench-processes", "1", "--quantize", "none",
                        "--runs-dir", str(runs), "--method", method,
                        *method_options)
    assert result.returncode == 0, result.stderr[-3000:]
    run = runs / model
    report = json.loads((run / "pruned" / "report.json").read_text())
    assert abs(report["mac_reduction"] - 0.5) <= 0.01 and report["method"] == method
    assert any(len(producers) > 1 for producers in report["groups"])  # channels a residual addition ties together
    base, finetuned = (Checkpoint.load(run / stage / "checkpoint.pt") for stage in ("base", "finetuned"))
    assert base.arch == {"name": model, "width": 0.0625, "num_classes": 10, "channels": None}
    assert base.recipe["model"] == finetuned.recipe["model"] == model
    assert finetuned.arch["channels"] == [row["channels_after"] for row in report["layers"]]
    assert count_cost(finetuned.model()).macs == report["macs_after"]
    bench = json.loads((run / "bench.json").read_text())
    assert {(r["model"], r["runtime"]) for r in bench["rows"]} == {
        (m, r) for m in ("base", "pruned") for r in ("pytorch", "torchscript-lite", "onnxruntime", "executorch")}


def test_resnet56_runs_the_whole_pipeline(tmp_path, cifar_dir):
    """SCP on residual groups: a removed channel is folded into its twin in every block of the stage. Uniform
    allocation: the sensitivity curves on ResNet-56's groups are test_a_pruned_model_rebuilds_from_its_record's."""
    run_the_pipeline(tmp_path, cifar_dir, "resnet56", "scp", "--allocation", "uniform", "--round-to", "1",
                     "--eval-images", "128", "--batch-size", "64")
