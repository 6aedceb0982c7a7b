"""Imports point down: the pruning library never imports the layers above it (training, deployment, measurement,
the app), so it prunes any model without knowing this project's data, files or runtimes."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "prunedroid"
# Project modules the library may use: the shared error type and option checks, which import nothing of ours.
LIBRARY_MAY_IMPORT = {"prunedroid.errors", "prunedroid.options"}


def project_imports(path: Path) -> set[str]:
    """Every prunedroid module `path` imports, at any depth of the file (lazy imports inside functions count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{alias.name}" if node.module == "prunedroid" else node.module
                         for alias in node.names)
    return {name for name in found if name == "prunedroid" or name.startswith("prunedroid.")}


@pytest.mark.parametrize("path", sorted((PACKAGE / "pruning").glob("*.py")), ids=lambda p: p.name)
def test_the_pruning_library_imports_nothing_above_it(path):
    upward = {name for name in project_imports(path)
              if not name.startswith("prunedroid.pruning") and name not in LIBRARY_MAY_IMPORT}
    assert not upward, f"{path.name} imports {sorted(upward)}"


# Every module of the package, by layer, lowest first: a module imports its own layer and those below, never above.
# A layer is a subpackage (or, for the base and the runs on top, a few modules beside the subpackages).
LAYERS = {
    "base": ("errors", "options", "files"),
    "library": ("pruning",),
    "models and data": ("models", "data"),
    "training": ("training",),
    "deployment": ("deploy",),
    "measurement": ("measure",),
    "app": ("android",),
    "runs": ("pruned", "flow", "request", "cli_help", "__init__"),
    "experiments": ("experiment",),  # what the scripts under benchmarks/ share; nothing in the product imports it
}
LAYER_OF = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}


def top_module(name: str) -> str:
    """prunedroid.pruning.groups -> pruning; prunedroid -> __init__."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_imports_only_its_layer_and_below(path):
    relative = path.relative_to(PACKAGE)
    module = relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 or relative.stem != "__init__" \
        else "__init__"
    assert module in LAYER_OF, f"{relative} is in no layer: add it to tests/test_layers.py LAYERS"
    upward = {name for name in project_imports(path) if LAYER_OF[top_module(name)] > LAYER_OF[module]}
    assert not upward, f"{relative} ({list(LAYERS)[LAYER_OF[module]]}) imports {sorted(upward)} from above it"


def test_the_base_modules_import_no_project_layer():
    for name in LIBRARY_MAY_IMPORT:
        path = PACKAGE / f"{name.split('.')[-1]}.py"
        assert project_imports(path) <= {"prunedroid.errors"}, path.name


def test_the_walk_sees_an_upward_import(tmp_path):
    """The check itself: a library file importing training is caught, however the import is written."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from prunedroid import training\n    import prunedroid.measure.bench\n")
    assert project_imports(bad) == {"prunedroid.training", "prunedroid.measure.bench"}


def test_the_library_type_checks(tmp_path):
    """mypy, configured in pyproject.toml ([tool.mypy]: the whole package and tasks.py), reports nothing."""
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path)], cwd=PACKAGE.parent,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
