"""Checkpoints as plain data (loadable with weights_only=True) and atomic artifact writes."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pipeline.data import IMAGE_SHAPE
from pipeline.errors import PipelineError
from pipeline.models import VGG, VGGSpec, build_model

KIND = "prunedroid/checkpoint"
FORMAT_VERSION = 1


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success it is fsynced and renamed over `path` in one step, on
    failure removed. Readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    # Created as open() would (mode 0o666 less the umask), not 0o600 as mkstemp's: results are for sharing.
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Creates `folder` and holds an exclusive lock on the folder itself (flock on its descriptor: no lock file is
    left behind) while the block runs, so two processes never write one run folder at once - the second is refused.
    The OS drops the lock when its holder exits, however it exits, so a killed run leaves no stale lock. A folder
    this call created is removed again if the block leaves it empty (it failed before writing anything)."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(f"{folder} is being written by another prunedroid process; wait for it to finish, "
                                f"or write to another folder (--out / --name)") from None
        yield folder
    finally:
        if created and not any(folder.iterdir()):
            folder.rmdir()
        os.close(descriptor)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": str(torch.__version__), "numpy": np.__version__}


def save_checkpoint(path: str | Path, checkpoint: dict) -> None:
    """Writes `checkpoint` (arch, state_dict, recipe, metrics, ... - plain data only) with its kind and versions."""
    with atomic_path(path) as tmp:
        torch.save({"kind": KIND, "format_version": FORMAT_VERSION, "versions": library_versions(), **checkpoint}, tmp)


def existing_checkpoint(path: str | Path) -> Path:
    """`path`, or an error saying there is no checkpoint there."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"checkpoint not found: {path}. Train one with `invoke train` or check the path.")
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Loads a checkpoint written by save_checkpoint, refusing anything else with a message that says why."""
    path = existing_checkpoint(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load fails on foreign bytes in many ways (KeyError, EOFError, ...): all mean this
        raise PipelineError(f"{path} is not a readable checkpoint (corrupted, truncated or not a PyTorch file): "
                            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") != KIND:
        raise PipelineError(f"{path} is a PyTorch file but not a prunedroid checkpoint (no kind '{KIND}'); "
                            f"pass a checkpoint written by `invoke train`.")
    if checkpoint.get("format_version") != FORMAT_VERSION:
        raise PipelineError(f"{path} has checkpoint format {checkpoint.get('format_version')}, this version reads "
                            f"{FORMAT_VERSION}; re-create it with this version of prunedroid.")
    return checkpoint


def checked_spec(checkpoint: dict) -> VGGSpec:
    """The checkpoint's architecture, checked against its own weights before anything real is allocated: the
    network is built on the meta device (shapes only, no memory), its tensor shapes compared with the state dict's,
    and a 32x32 image traced through it, so a tampered description fails here instead of asking for terabytes.
    Weights that are NaN or infinite are refused too: no stage can make a working model of them."""
    spec = VGGSpec.from_dict(checkpoint.get("arch") if isinstance(checkpoint.get("arch"), dict) else {})
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PipelineError("checkpoint has no state dict of tensors: it was not written by prunedroid, or is damaged")
    with torch.device("meta"):
        skeleton = VGG(spec)
        try:
            skeleton.eval()(torch.empty(1, spec.in_channels, *IMAGE_SHAPE[1:]))
        except RuntimeError as err:
            raise PipelineError(f"checkpoint architecture cannot classify {IMAGE_SHAPE[1]}x{IMAGE_SHAPE[2]} images: "
                                f"{str(err).splitlines()[0]}") from err
    expected = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
    found = {name: tuple(tensor.shape) for name, tensor in state.items()}
    wrong = [f"{name}: {found.get(name, 'missing')} vs {shape}" for name, shape in expected.items()
             if found.get(name) != shape] + [f"{name}: unexpected" for name in found if name not in expected]
    if wrong:
        raise PipelineError(f"checkpoint weights do not match its architecture description ({len(wrong)} tensors, "
                            f"e.g. {'; '.join(wrong[:3])}): the file is damaged or was edited")
    broken = [name for name, tensor in state.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if broken:
        raise PipelineError(f"checkpoint holds NaN or infinite values in {len(broken)} tensors (first: {broken[0]}): "
                            f"the training that wrote it diverged or the file is damaged; retrain (a lower --lr) or "
                            f"use an earlier checkpoint")
    return spec


def model_from_checkpoint(checkpoint: dict) -> VGG:
    """The model a checkpoint describes, with its weights (in training mode, as built)."""
    model = build_model(checked_spec(checkpoint))
    model.load_state_dict(checkpoint["state_dict"])
    return model
