"""A method is one class: the example in docs/development.md, defined as written, is a method the library, the
option parser and the command line's help all know, with nothing else edited."""
import importlib.util

import pytest
import torch
from conftest import ROOT, documented_example

import prunedroid
from prunedroid.errors import PrunedroidError
from prunedroid.pruning import REGISTRY, resolve_method
from tests.test_api import model_and_data


@pytest.fixture
def lp_method():
    """The documented example, executed; unregistered afterwards so no other test sees it."""
    yield documented_example("Adding a pruning method")["LpConfig"]
    REGISTRY.pop("lp")


def test_a_method_defined_in_one_class_prunes_and_parses(lp_method):
    model, _ = model_and_data()
    example = torch.zeros(1, 3, 32, 32)
    lp = prunedroid.prune(model, example, "lp", mac_reduction=0.5, p=1.0)
    l1 = prunedroid.prune(model, example, "l1", mac_reduction=0.5)
    assert [row["kept"] for row in lp.report["layers"]] == [row["kept"] for row in l1.report["layers"]]
    assert lp.report["method"] == "lp" and lp.report["options"] == {"p": 1.0}
    assert abs(prunedroid.prune(model, example, "lp", mac_reduction=0.5, allocation="global").report[
        "mac_reduction"] - 0.5) <= 0.01
    assert resolve_method("lp", {"p": "3"}, None, prunedroid.pruning.Budget.of(ratio=0.5))[0] == lp_method(p=3.0)
    with pytest.raises(PrunedroidError, match="`p` expects a finite number"):
        resolve_method("lp", {"p": "x"}, None, prunedroid.pruning.Budget.of(ratio=0.5))
    with pytest.raises(PrunedroidError, match="`knn` applies to `method` scp only, not to `method` lp"):
        resolve_method("lp", {"knn": "3"}, prunedroid.pruning.Budget.of(ratio=0.5))


def test_the_command_line_help_is_generated_from_the_fields(lp_method):
    from prunedroid.cli_help import budget_help, method_help

    spec = importlib.util.spec_from_file_location("project_tasks", ROOT / "tasks.py")
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)
    methods, options = method_help()
    assert "lp: the smallest filter Lp norms go first" in methods
    assert options["p"] == "lp: the norm's order (1: L1) (default 2.0)"
    assert options["knn"] == "scp: nearest neighbours per channel in the similarity matrix (default 3)"
    assert options["keep"].startswith("kmeans: ") and "; scp: " in options["keep"]  # a name two methods share
    prune_task = tasks.prune
    assert {"knn", "mac_reduction", "round_to", "importance"} <= {arg.name for arg in prune_task.get_arguments()}
    # the library's help names options by field (`allocation`); the command line's names its flags
    assert "--latency-reduction" in budget_help()["allocation"] and "`" not in str(budget_help())
    assert budget_help()["mac_reduction"] == "fraction of MACs to remove, e.g. 0.5 (reached within 1%)"
