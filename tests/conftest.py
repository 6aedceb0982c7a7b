"""Shared fixtures: synthetic CIFAR-10 batches written in the official python format (no network, no real data)."""
from __future__ import annotations

import fcntl
import functools
import json
import os
import pickle
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from prunedroid import data as cifar
from prunedroid.models import VGGSpec, build_model
from prunedroid.pruning import ChannelGraph, channel_graph

ROOT = Path(__file__).resolve().parent.parent
REAL_CIFAR_DIR = ROOT.parent / "shared" / cifar.ARCHIVE_FOLDER
PHONE = "R5CT1234ABC            device usb:1-1 product:panther model:Pixel_7 device:panther transport_id:3"

# One compute thread in every test process and every process a test starts (`invoke test` runs a test process per
# core): the machine's core count decides nothing, and no process spins on cores the others hold. Oversubscribed (two
# processes of two threads on 2 cores), a ResNet-56 smoke epoch ran at 10 images/s; with a thread each, at 178.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"


# The test files that take longest (whole pipelines, exports, the JVM), longest first, as measured on 2 cores: `invoke
# test` has pytest-xdist hand files out in collection order (--no-loadscope-reorder; by default it starts with the
# files of most tests, which left a one-test, three-minute file for the end), so no process ends alone on a long one.
LONGEST_FILES = ("test_hostile.py", "test_flow.py", "test_architectures.py", "test_hostile_round2.py", "test_export.py",
                 "test_architecture_pipeline.py", "test_tasks.py", "test_experiment.py", "test_apk_build.py",
                 "test_android_jvm.py", "test_device.py", "test_latency.py", "test_distributed.py", "test_fuzz.py",
                 "test_api.py", "test_layers.py", "test_allocation.py", "test_train.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FILES)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def no_data_unless_given(monkeypatch, tmp_path_factory):
    """Tests, and the processes they start, find no CIFAR-10 unless they pass --data-dir (or set CIFAR10_DIR
    themselves): CIFAR10_DIR points at an empty folder, so neither the caller's shell nor the project's own data/
    folder can decide an outcome, and a task that looks for data it should not need fails the test."""
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path_factory.mktemp("no-cifar10")))


# A guard against a hang, not a speed target: a smoke pipeline takes about 2 minutes alone on 2 cores and more than 5
# when the machine is shared with other work, which must not fail a test.
HANG_GUARD_S = 1200


def run_invoke(*args: str, timeout: float = HANG_GUARD_S, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`invoke ARGS` as a user types it, in a fresh interpreter, from the project root or from `cwd` (tasks.py is
    found through --search-root)."""
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args], cwd=cwd,
                          capture_output=True, text=True, env=project_env(), timeout=timeout, check=False)


def project_env() -> dict[str, str]:
    """This process's environment, with the project importable (tasks.py imports prunedroid)."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def run_invoke_each(calls: list[tuple[tuple[str, ...], Path]], env: dict[str, str] | None = None,
                    timeout: float = HANG_GUARD_S) -> list[subprocess.CompletedProcess]:
    """run_invoke for each (args, cwd) in `calls`, with `env` set, all in one fresh interpreter (tests/invoke_each.py):
    one torch import instead of one per command, for command lines that end before any work (help, refusals). A
    command that starts processes of its own is for run_invoke: their output would not be captured here."""
    folder = Path(tempfile.mkdtemp(prefix="invoke-each-"))
    try:
        asked = [{"args": list(args), "cwd": str(cwd), "env": env or {}, "root": str(ROOT)} for args, cwd in calls]
        (folder / "calls.json").write_text(json.dumps(asked), encoding="utf-8")
        driver = subprocess.run([sys.executable, str(Path(__file__).parent / "invoke_each.py"),
                                 str(folder / "calls.json"), str(folder / "answers.json")], capture_output=True,
                                text=True, env=project_env(), timeout=timeout, check=False)
        assert driver.returncode == 0, driver.stderr[-3000:]
        answers = json.loads((folder / "answers.json").read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(folder)
    return [subprocess.CompletedProcess(["invoke", *args], answer["code"], answer["stdout"], answer["stderr"])
            for (args, _), answer in zip(calls, answers)]


def documented_example(section: str) -> dict:
    """The names the first Python example under `## <section>` in docs/development.md defines, once executed: a
    recipe the guide gives is a recipe the suite runs."""
    guide = (ROOT / "docs" / "development.md").read_text().split(f"## {section}\n", 1)[1]
    namespace: dict = {}
    code = re.search(r"```python\n(.*?)```", guide, re.S).group(1)
    # Compiled as a reader would run it: not under this file's `from __future__ import annotations`.
    exec(compile(code, f"docs/development.md ({section})", "exec", dont_inherit=True), namespace)
    return namespace


def write_batch(path: Path, seed: int, images: int = cifar.IMAGES_PER_BATCH_FILE) -> None:
    """One batch file laid out as the official ones: a pickled dict with bytes keys and a uint8 array. Protocol 4,
    because Python 3 writes protocol-2 bytes through _codecs.encode, a global the official (Python 2) files lack."""
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": f"synthetic batch {seed}".encode(),
             b"labels": rng.integers(0, 10, images).tolist(),
             b"data": rng.integers(0, 256, (images, 3072), dtype=np.uint8),
             b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(images)]}
    with open(path, "wb") as fh:
        pickle.dump(batch, fh, protocol=4)


def write_cifar_dir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate((*cifar.TRAIN_FILES, cifar.TEST_FILE)):
        write_batch(folder / name, seed)
    return folder


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    """A complete synthetic cifar-10-batches-py folder (random images and labels); treat as read-only."""
    return write_cifar_dir(tmp_path_factory.mktemp("synthetic") / cifar.ARCHIVE_FOLDER)


@pytest.fixture(scope="session")
def synthetic_data(cifar_dir) -> cifar.Cifar10:
    return cifar.load_cifar10(cifar_dir, holdout=500, download=False)


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder `name` that `build(folder)` fills once per test run, for every test process: pytest-xdist's workers
    share their base temp folder's parent, so the first to ask builds under a lock and the others wait and reuse.
    Treat it as read-only."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def vgg_exports(tmp_path_factory, synthetic_data) -> dict[str, Path]:
    """Two VGG16-BN with non-trivial BatchNorm statistics (test_prune.trained_like), "base" at width 1/16 and "small"
    at 1/32, exported as `invoke export` does (fp32: .ptl, .onnx, .pte): name -> sidecar, its checkpoint <name>.pt
    in the sidecar's parent's parent. Exported once per test run (built_once); copy_export to change one."""
    from test_prune import trained_like

    from prunedroid.deploy.export import export_checkpoint
    from prunedroid.models import vgg16_spec
    from prunedroid.training.checkpoint import Checkpoint

    widths = {"base": 0.0625, "small": 0.03125}

    def build(folder: Path) -> None:
        folder.mkdir()
        for name, width in widths.items():
            model = trained_like(vgg16_spec(width))
            Checkpoint(arch=model.spec.to_dict(), state_dict=model.state_dict()).save(folder / f"{name}.pt")
            export_checkpoint(folder / f"{name}.pt", synthetic_data.test, folder / "out", name)

    folder = built_once(tmp_path_factory, "vgg-exports", build)
    return {name: folder / "out" / f"{name}.json" for name in widths}


def copy_export(sidecar: Path, folder: Path, stem: str | None = None) -> Path:
    """The export of `sidecar` (its .json, .ptl, .onnx, .pte) copied into `folder`, optionally under another stem."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = stem or sidecar.stem
    for suffix in (".ptl", ".onnx", ".pte"):
        shutil.copyfile(sidecar.with_suffix(suffix), folder / f"{stem}{suffix}")
    data = json.loads(sidecar.read_text())
    data.update(ptl=f"{stem}.ptl", onnx=f"{stem}.onnx", pte=f"{stem}.pte")
    (folder / f"{stem}.json").write_text(json.dumps(data))
    return folder / f"{stem}.json"


def save_untrained_base(path: Path, width: float = 0.0625, holdout: int = 500) -> Path:
    """An untrained VGG16-BN checkpoint shaped like a trained base's (recipe, held-out count, test top-1)."""
    from prunedroid.models import build_model, vgg16_spec
    from prunedroid.training.checkpoint import Checkpoint

    model = build_model(vgg16_spec(width))
    Checkpoint(arch=model.spec.to_dict(), state_dict=model.state_dict(), recipe={"width": width},
               data={"holdout_images": holdout}, metrics={"test": {"top1": 0.1}}).save(path)
    return path


@pytest.fixture
def phone(tmp_path) -> dict[str, str]:
    """An environment with tests/fake_adb.py first on PATH as `adb` and one attached phone, whose files live under
    tmp_path/state."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    adb = bin_dir / "adb"
    adb.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ROOT / "tests" / "fake_adb.py"}" "$@"\n')
    adb.chmod(adb.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "state").mkdir()
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_ADB_STATE": str(tmp_path / "state"),
            "FAKE_ADB_DEVICES": PHONE, "ANDROID_HOME": ""}


@functools.cache
def vgg_graph(spec: VGGSpec) -> ChannelGraph:
    """The channel graph of a VGG of `spec` (what budgets and allocations count channels and MACs on)."""
    with torch.device("meta"):
        model = build_model(spec)
    return channel_graph(model, torch.zeros(1, *cifar.IMAGE_SHAPE, device="meta"))
