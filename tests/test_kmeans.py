import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from prunedroid.errors import PrunedroidError
from prunedroid.models import VGGSpec, vgg16_spec
from prunedroid.pruned import prune_model
from prunedroid.pruning import Budget, KMeansConfig, kept_counts, resolve_method
from prunedroid.pruning.kmeans import filter_points, fit, representatives, search_k
from tests.conftest import run_invoke, save_untrained_base, vgg_graph
from tests.test_prune import SMALL, trained_like

# Every conv layer's filters come in well-separated groups: filter i belongs to group i % groups[layer].
GROUPS = (3, 4, 3, 5, 4, 3, 6, 2, 3, 4, 3, 4, 5)
GROUPED = VGGSpec(conv_channels=(8, 12, 9, 16, 12, 10, 18, 8, 9, 12, 10, 14, 16), hidden=12)


def grouped(seed: int, noise: float) -> nn.Module:
    """Group members share a random centre filter (He-scaled, plus `noise` times that scale of Gaussian noise per
    weight) and, with noise 0, the same BatchNorm parameters, so they compute the same map exactly."""
    model = trained_like(GROUPED, seed)
    generator = torch.Generator().manual_seed(seed)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for conv, norm, groups in zip(convs, norms, GROUPS):
            members = torch.arange(conv.out_channels) % groups
            scale = (2 / conv.weight[0].numel()) ** 0.5
            centres = scale * torch.randn(groups, *conv.weight.shape[1:], generator=generator)
            conv.weight.copy_(centres[members] + noise * scale * torch.randn(conv.weight.shape, generator=generator))
            if noise == 0:
                for tensor in (norm.weight, norm.bias, norm.running_mean, norm.running_var):
                    tensor.copy_(tensor[members])
    return model


def groups_kept(row: dict) -> list[int]:
    return sorted(channel % GROUPS[row["layer"]] for channel in row["kept"])


@pytest.mark.parametrize("choice", ["elbow", "silhouette"])
@pytest.mark.parametrize("keep", ["centroid", "random"])
def test_automatic_k_finds_the_groups_and_keeps_one_filter_of_each(choice, keep):
    _, report = prune_model(grouped(0, noise=0.01), KMeansConfig(clusters=choice, keep=keep), None)
    for row, groups in zip(report["layers"], GROUPS):
        assert row["k"] == groups and groups_kept(row) == list(range(groups)), row["search"]
        assert row["inertia_share"] < 1e-3 and row["search"]  # the curve it searched is reported


def test_automatic_k_on_plain_points_and_the_search_bound():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 20))
    points = centres[np.arange(60) % 5] + 0.01 * rng.normal(size=(60, 20))
    for choice in ("elbow", "silhouette"):
        k, curve = search_k(points, choice, lowest=1, seed=0)
        assert k == 5 and len(curve) < 40  # found by zooming in, not by trying every K
        assert search_k(points, choice, lowest=15, seed=0)[0] >= 15  # the floor (min_keep) bounds the search


def test_folding_exact_copies_rebuilds_the_output_and_dropping_them_does_not():
    model = grouped(1, noise=0.0)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    summed, report = prune_model(model, KMeansConfig(clusters="elbow", combine="sum"), None)
    dropped, _ = prune_model(model, KMeansConfig(clusters="elbow", combine="none"), None)
    with torch.no_grad():
        expected = model(x)
        relative_error = lambda pruned: float((pruned(x) - expected).norm() / expected.norm())
        assert relative_error(summed) < 1e-5 and relative_error(dropped) > 0.05
    assert [row["channels_after"] for row in report["layers"]] == list(GROUPS)
    assert all(len(row["merges"]) == row["channels_before"] - row["channels_after"] for row in report["layers"])


def test_clustering_is_deterministic_for_a_seed():
    model = trained_like(SMALL, 5)
    for config, budget in [(KMeansConfig(clusters="elbow"), None), (KMeansConfig(keep="random"), Budget.of(ratio=0.5))]:
        first, first_report = prune_model(model, config, budget, seed=3)
        second, second_report = prune_model(model, config, budget, seed=3)
        assert first_report["layers"] == second_report["layers"]
        assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_the_kept_filters_do_not_depend_on_rounding():
    """Another CPU's BLAS and LAPACK kernels leave other last bits in the points (filter_points' eigenvectors, the
    centres); a rotation does the same here. Given one clustering, the keeper rule must choose the same filters
    from either set of points: the two members of a pair are equally near their centre, so a keeper chosen by those
    bits differed under rotation in about half of these clusterings. Both point sets get the same clustering: when
    each was clustered anew, the kept filters differed on an Intel Xeon with AVX-512 (trial 1), and which clustering
    scikit-learn's k-means converges to is not this rule's to fix - the cut may differ between CPUs there."""
    rng = np.random.default_rng(0)
    for trial in range(20):
        points = rng.normal(size=(16, 40))
        rotation, _ = np.linalg.qr(rng.normal(size=(40, 40)))
        clustering = fit(points, 9, 2, 1)
        rotated = copy.copy(clustering)
        rotated.cluster_centers_ = clustering.cluster_centers_ @ rotation
        kept = [representatives(p, c, 9, "centroid", np.random.default_rng(0))[0]
                for p, c in ((points, clustering), (points @ rotation, rotated))]
        assert kept[0] == kept[1], trial


def test_budget_mode_keeps_exactly_the_budgeted_channels_even_with_identical_filters():
    model = trained_like(SMALL, 6)
    with torch.no_grad():
        model.features[0].weight[:4] = 0  # four identical filters: fewer distinct points than some K
    for budget in (Budget.of(ratio=0.5), Budget.of(mac_reduction=0.6)):
        pruned, report = prune_model(model, KMeansConfig(), budget)
        assert [row["channels_after"] for row in report["layers"]] == kept_counts(vgg_graph(SMALL), budget)
        assert pruned.spec.conv_channels == tuple(kept_counts(vgg_graph(SMALL), budget))


def test_filter_points_keep_every_distance():
    weight = torch.randn(12, 5, 3, 3, generator=torch.Generator().manual_seed(7))
    points = torch.from_numpy(filter_points(weight, normalize=False))
    assert points.shape == (12, 12)
    flat = weight.flatten(1).double()
    assert torch.allclose(torch.cdist(points, points), torch.cdist(flat, flat), atol=1e-9)
    unit = filter_points(weight, normalize=True)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1)


def test_options_and_budgets_resolve_or_explain():
    config, budget = resolve_method("kmeans", {"clusters": None, "keep": "random"}, None)
    assert config == KMeansConfig(keep="random") and budget == Budget.of(ratio=0.5)  # the blog's K = N/2
    assert resolve_method("kmeans", {"clusters": "silhouette"}, None) == (KMeansConfig(clusters="silhouette"), None)
    for name, options, budget, message in [
        ("kmeans", {"clusters": "gap"}, None, "unknown `clusters` 'gap'"),
        ("kmeans", {"keep": "first"}, None, "unknown kept-filter rule"),
        ("kmeans", {"combine": "lstsq"}, None, "must be one of none, sum"),
        ("kmeans", {"restarts": "0"}, None, "restarts must be >= 1"),
        ("kmeans", {"min_keep": "1.5"}, None, "min-keep is a fraction"),
        ("kmeans", {"clusters": "elbow"}, Budget.of(ratio=0.5), "chooses K per layer itself"),
        ("kmeans", {"criterion": "cosine"}, None, "`criterion` applies to `method` scp only"),
        ("l1", {"clusters": "elbow"}, Budget.of(ratio=0.5), "`clusters` applies to `method` kmeans only"),
        ("kmedoids", {}, None, "unknown pruning method 'kmedoids'"),
    ]:
        with pytest.raises(PrunedroidError, match=message):
            resolve_method(name, options, budget)


def test_kmeans_from_the_command_line(tmp_path, cifar_dir):
    base = save_untrained_base(tmp_path / "base.pt")
    out = tmp_path / "kmeans"
    common = ("prune", "--checkpoint", str(base), "--method", "kmeans", "--data-dir", str(cifar_dir), "--out", str(out))
    refused = run_invoke(*common, "--clusters", "elbow", "--mac-reduction", "0.5")
    assert refused.returncode == 2 and "chooses K per layer itself" in refused.stderr and not out.exists()
    # the library names its fields (`mac_reduction`); the command line names them as its flags
    assert "drop --mac-reduction/--ratio/--layer-ratios" in refused.stderr and "`" not in refused.stderr
    done = run_invoke(*common, "--keep", "random", "--combine", "sum")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "kmeans" and report["options"]["keep"] == "random"
    assert report["budget"] == {"ratio": 0.5, "tolerance": 0.01, "round_to": 1, "allocation": "uniform"}
    assert [row["channels_after"] for row in report["layers"]] == [c // 2 for c in vgg16_spec(0.0625).conv_channels]
