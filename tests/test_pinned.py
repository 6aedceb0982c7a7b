"""VGG16's cuts are pinned: tests/data/vgg_cuts.json holds the channels each method kept, and the logits of the pruned
model, as the per-layer VGG surgery computed them before pruning moved onto channel groups (commit d521dee). The
group path must choose the same channels and compute the same function. The two k-means cases were pinned again when
k-means stopped letting rounding decide which member of an equidistant pair stays (kmeans.comparable): the old pins
held on one CPU and not on another."""
import json
from pathlib import Path

import pytest
import torch

from prunedroid import data as cifar
from prunedroid.models import build_model, vgg16_spec
from prunedroid.pruned import prune_model
from prunedroid.pruning import Budget, KMeansConfig, SCPConfig, TorchPruningConfig
from prunedroid.training.train import remeasure_batchnorm

PINNED = json.loads((Path(__file__).parent / "data" / "vgg_cuts.json").read_text())
SCP = dict(eval_images=256, batch_size=64)
CASES = {
    "l1-uniform-mac50": ("l1", dict(mac_reduction=0.5)),
    "l1-uniform-ratio50-round4": ("l1", dict(ratio=0.5, round_to=4)),
    "random-uniform-mac50": ("random", dict(mac_reduction=0.5)),
    "l1-global-mac50": ("l1", dict(mac_reduction=0.5, allocation="global")),
    "l1-sensitivity-mac50": ("l1", dict(mac_reduction=0.5, allocation="sensitivity")),
    "scp-mac50": (SCPConfig(**SCP), dict(mac_reduction=0.5)),
    "scp-threshold": (SCPConfig(criterion="euclidean", threshold=0.55, combine="sum", rank="similarity", keep="norm",
                                loss_at="bn", **SCP), None),
    "scp-global-mac50": (SCPConfig(criterion="chebyshev", **SCP), dict(mac_reduction=0.5, allocation="global")),
    "kmeans-ratio50-sum": (KMeansConfig(combine="sum", restarts=2), dict(ratio=0.5)),
    "kmeans-elbow": (KMeansConfig(clusters="elbow", restarts=1), None),
    "tp-magnitude-mac50": (TorchPruningConfig(), dict(mac_reduction=0.5)),
    "tp-taylor-mac50": (TorchPruningConfig(importance="taylor", eval_images=256, batch_size=64),
                        dict(mac_reduction=0.5)),
}


@pytest.fixture(scope="module")
def base(synthetic_data) -> torch.nn.Module:
    """A seeded VGG16-BN at width 1/8 with BatchNorm statistics measured on 512 (synthetic) training images."""
    torch.manual_seed(0)
    return remeasure_batchnorm(build_model(vgg16_spec(0.125)), synthetic_data.train.images[:512]).eval()


@pytest.mark.parametrize("case", CASES)
def test_vgg_cuts_are_unchanged(case, base, synthetic_data):
    method, budget = CASES[case]
    holdout = synthetic_data.holdout
    pruned, report = prune_model(base, method, None if budget is None else Budget.of(**budget), seed=1,
                                 evaluation=cifar.Split(holdout.images[:256], holdout.labels[:256]), holdout=holdout)
    assert [row["kept"] for row in report["layers"]] == PINNED[case]["kept"]
    assert report["macs_after"] == PINNED[case]["macs_after"]
    with torch.no_grad():
        logits = pruned.eval()(cifar.normalize(synthetic_data.test.images[:4]))
    assert torch.allclose(logits, torch.tensor(PINNED[case]["logits"]), rtol=1e-4, atol=1e-5)
