"""Shared fixtures: synthetic CIFAR-10 batches written in the official python format (no network, no real data)."""
from __future__ import annotations

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

# The test processes share the cores (pytest-xdist: `invoke test` starts one per core): each one, and each process a
# test starts, computes on its share instead of on every core, as torch would by default. Oversubscribed, two
# processes ran the ResNet-56 and MobileNetV2 pipelines in 164 s each; with a thread each, in 60 s.
TEST_PROCESSES = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, (os.cpu_count() or 1) // TEST_PROCESSES)
torch.set_num_threads(THREADS)
os.environ["OMP_NUM_THREADS"] = str(THREADS)


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


def save_untrained_base(path: Path, width: float = 0.0625, holdout: int = 500) -> Path:
    """An untrained VGG16-BN checkpoint shaped like a trained base's (recipe, held-out count, test top-1)."""
    from prunedroid.checkpoint import Checkpoint
    from prunedroid.models import build_model, vgg16_spec

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
