"""Checkpoints: one typed record, kept on disk as plain data (loadable with weights_only=True) and checked before
any weight is trusted."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import platform
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunedroid.data import IMAGE_SHAPE
from prunedroid.errors import PrunedroidError
from prunedroid.files import atomic_path
from prunedroid.models import VGG, VGGSpec, build_model, is_vgg
from prunedroid.options import is_finite_number

KIND = "prunedroid/checkpoint"
FORMAT_VERSION = 1
MAX_CHECKPOINT_BYTES = 4 << 30  # full-width VGG16 with its optimiser state is about 120 MB


def library_versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": str(torch.__version__), "numpy": np.__version__}


@dataclass
class Checkpoint:
    """One model's record: `arch` is its constructor's arguments (prunedroid.models.arch_of), `state_dict` its
    weights, and the rest how it came to be. On disk it is plain data (loadable with weights_only=True) with a kind
    and format version; `load` checks every record before any weight is trusted, `model()` checks the weights
    against `arch`.

    epoch: epochs trained (0: just built or pruned); history: one record per epoch (train_loss, train_top1, seconds,
    images_per_s, holdout_top1); cost: {"macs", "params"}; optimizer: the SGD state a resume continues from;
    recipe: the TrainConfig as a dict; metrics: {"test": {"top1" (a fraction), "images", "loss"}} once evaluated;
    data: {"mean", "std", "classes", "train_images", "holdout_images"}; pruning: the prune report of a pruned model;
    teacher: {"checkpoint", "sha256"} distilled from; init: {"weights_sha256"} of the weights training started
    from; versions: python, torch and numpy of the run that wrote it."""

    arch: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, int] | None = None
    optimizer: dict[str, Any] | None = None
    seed: int | None = None
    device: str | None = None
    pruning: dict[str, Any] | None = None
    teacher: dict[str, Any] | None = None
    init: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=library_versions)

    @property
    def held_out_images(self) -> int:
        """How many training images the run held out (the tail of the training split; 0 when none)."""
        return int(self.data.get("holdout_images", 0))

    @property
    def test_top1(self) -> float | None:
        """The test top-1 (a fraction), or None where it was not evaluated (an unfinished training)."""
        return (self.metrics.get("test") or {}).get("top1")

    def model(self) -> nn.Module:
        """The model this checkpoint describes, with its weights (in training mode, as built)."""
        model = checked_model(self)
        model.load_state_dict(self.state_dict)
        return model

    def to_bytes(self) -> bytes:
        """The bytes of the checkpoint file, with the versions of this run. Serialised in memory so that the write
        itself is Python's: a full disk is then an OSError like any other (torch's own writer fails with a
        RuntimeError that names no path)."""
        record = {key: value for key, value in dataclasses.asdict(self).items() if value is not None}
        serialised = io.BytesIO()
        torch.save({"kind": KIND, "format_version": FORMAT_VERSION, **record, "versions": library_versions()},
                   serialised)
        return serialised.getvalue()

    def save(self, path: str | Path) -> None:
        """Writes the checkpoint to `path` atomically."""
        data = self.to_bytes()
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """The checkpoint `save` wrote at `path`, refusing anything else with a message that says why."""
        return cls(**_checked_record(path))


# Every key a checkpoint file of this format may hold: anything else was added by hand or by another program.
KEYS = frozenset({"kind", "format_version", *(field.name for field in dataclasses.fields(Checkpoint))})


def existing_checkpoint(path: str | Path) -> Path:
    """`path`, or an error saying there is no checkpoint there."""
    path = Path(path)
    if not path.is_file():
        raise PrunedroidError(f"checkpoint not found: {path}. Train one with `invoke train` or check the path.")
    return path


def _check_archive(path: Path) -> None:
    """torch.save writes a zip archive of stored (uncompressed) entries; a compressed entry, as in a zip bomb, would
    be inflated by torch.load without bound, so only stored entries within MAX_CHECKPOINT_BYTES are let through."""
    if path.stat().st_size > MAX_CHECKPOINT_BYTES:
        raise PrunedroidError(f"{path} is larger than {MAX_CHECKPOINT_BYTES >> 30} GiB: not a checkpoint of this "
                              "project")
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except Exception as err:  # zipfile fails on foreign bytes in many ways (BadZipFile, NotImplementedError, ...)
        raise PrunedroidError(f"{path} is not a readable checkpoint (corrupted, truncated or not a PyTorch file): "
                              f"{err}") from None
    packed = [e.filename for e in entries if e.compress_type != zipfile.ZIP_STORED]
    if packed or sum(e.file_size for e in entries) > MAX_CHECKPOINT_BYTES:
        raise PrunedroidError(f"{path} holds compressed or oversized entries ({', '.join(packed[:2]) or 'size'}), "
                              f"which torch.save never writes: the file was altered; use the checkpoint `invoke train` "
                              f"wrote")


def _is_fraction(value: Any) -> bool:
    return is_finite_number(value) and 0 <= value <= 1


def record_problems(checkpoint: dict) -> list[str]:
    """What is wrong with a checkpoint's records (everything but its weights, which checked_spec checks)."""
    problems = [f"{key}: not part of this format" for key in sorted(set(checkpoint) - KEYS)]
    if not isinstance(checkpoint.get("arch"), dict):
        problems.append("arch: the architecture (an object)")
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        problems.append("state_dict: the weights (tensors by name)")
    for key, kind in (("recipe", dict), ("data", dict), ("metrics", dict), ("history", list), ("cost", dict)):
        if key in checkpoint and not isinstance(checkpoint[key], kind):
            problems.append(f"{key}: {'an object' if kind is dict else 'a list'}")
    if "epoch" in checkpoint and not (type(checkpoint["epoch"]) is int and checkpoint["epoch"] >= 0):
        problems.append("epoch: a whole number >= 0")
    for key in ("pruning", "teacher", "init", "optimizer", "versions"):
        if checkpoint.get(key) is not None and not isinstance(checkpoint[key], dict):
            problems.append(f"{key}: null or an object")
    for key, wanted in (("seed", int), ("device", str)):
        if checkpoint.get(key) is not None and type(checkpoint[key]) is not wanted:
            problems.append(f"{key}: null or {'a whole number' if wanted is int else 'text'}")
    held_out = checkpoint.get("data", {}).get("holdout_images", 0) if isinstance(checkpoint.get("data"), dict) else 0
    if not (type(held_out) is int and held_out >= 0):
        problems.append("data.holdout_images: a whole number >= 0")
    test = checkpoint.get("metrics", {}).get("test") if isinstance(checkpoint.get("metrics"), dict) else None
    if test is not None and not (isinstance(test, dict) and _is_fraction(test.get("top1"))):
        problems.append("metrics.test.top1: a fraction in 0..1")
    return problems


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A fingerprint of the weights themselves (names, dtypes, shapes and values), whatever file holds them."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _checked_record(path: str | Path) -> dict[str, Any]:
    """The fields of the checkpoint file at `path` (as Checkpoint takes them), once its kind, format and every
    record are sound."""
    path = existing_checkpoint(path)
    _check_archive(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load fails on foreign bytes in many ways (KeyError, EOFError, ...): all mean this
        raise PrunedroidError(f"{path} is not a readable checkpoint (corrupted, truncated or not a PyTorch file): "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") != KIND:
        raise PrunedroidError(f"{path} is a PyTorch file but not a prunedroid checkpoint (no kind '{KIND}'); "
                              f"pass a checkpoint written by `invoke train`.")
    if checkpoint.get("format_version") != FORMAT_VERSION:
        raise PrunedroidError(f"{path} has checkpoint format {checkpoint.get('format_version')!r}, this version reads "
                              f"{FORMAT_VERSION}; re-create it with this version of prunedroid.")
    problems = record_problems(checkpoint)
    if problems:
        raise PrunedroidError(f"{path} is damaged or was edited ({'; '.join(problems[:3])}); use the checkpoint "
                              f"`invoke train` wrote, or train again")
    return {key: value for key, value in checkpoint.items() if key not in ("kind", "format_version")}


def checked_model(checkpoint: Checkpoint) -> nn.Module:
    """The checkpoint's model (fresh weights), its architecture checked against the checkpoint's weights before
    anything large is allocated. A VGG is built on the meta device first (shapes only, no memory) and a 32x32 image
    traced through it, so a tampered layer list fails here instead of asking for terabytes; a registered model's
    description is bounded (models.ModelConfig: its width, classes and per-group channels) before it is built.
    Weights that are NaN or infinite are refused too: no stage can make a working model of them."""
    state = checkpoint.state_dict
    if is_vgg(checkpoint.arch):
        spec = VGGSpec.from_dict(checkpoint.arch)
        with torch.device("meta"):
            skeleton: nn.Module = VGG(spec)
            try:
                skeleton.eval()(torch.empty(1, spec.in_channels, *IMAGE_SHAPE[1:]))
            except RuntimeError as err:
                raise PrunedroidError(f"checkpoint architecture cannot classify {IMAGE_SHAPE[1]}x{IMAGE_SHAPE[2]} "
                                      f"images: {str(err).splitlines()[0]}") from err
        build: Callable[[], nn.Module] = lambda: build_model(spec)
    else:
        skeleton = build_model(checkpoint.arch)
        build = lambda: skeleton
    expected = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
    found = {name: tuple(tensor.shape) for name, tensor in state.items()}
    wrong = [f"{name}: {found.get(name, 'missing')} vs {shape}" for name, shape in expected.items()
             if found.get(name) != shape] + [f"{name!r}: unexpected" for name in found if name not in expected]
    if wrong:
        raise PrunedroidError(f"checkpoint weights do not match its architecture description ({len(wrong)} tensors, "
                              f"e.g. {'; '.join(wrong[:3])}): the file is damaged or was edited")
    broken = [name for name, tensor in state.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if broken:
        raise PrunedroidError(f"checkpoint holds NaN or infinite values in {len(broken)} tensors "
                              f"(first: {broken[0]!r}): the training that wrote it diverged or the file is damaged; "
                              f"retrain (a lower --lr) or use an earlier checkpoint")
    return build()
