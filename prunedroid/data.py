"""CIFAR-10 from the official python-format batches, held as uint8 tensors and augmented a whole batch at a time.

Where the data comes from: an explicit `data_dir`, else the `CIFAR10_DIR` environment variable, else
`data/cifar-10-batches-py` in the project - one folder, never a fallback to the next. A missing or empty folder is
downloaded into from the official archive (MD5-checked) unless downloading is turned off.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from prunedroid.errors import PrunedroidError
from prunedroid.files import open_regular

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel statistics of the 50,000 training images (0-1 scale). The only copy: training, export sidecars and the
# Android app all read these.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
IMAGES_PER_BATCH_FILE = 10_000
IMAGE_SHAPE = (3, 32, 32)
# The official batches are 31,035,526-31,035,704 bytes: a larger file is not one, and is refused before it is read.
MAX_BATCH_BYTES = 32 << 20
PROJECT_DATA_DIR = Path(__file__).resolve().parent.parent / "data" / ARCHIVE_FOLDER


@dataclass(frozen=True)
class Split:
    """images: uint8 (N, 3, 32, 32); labels: int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, count: int | None) -> Split:
        """The first `count` images (all when None): slices for smoke runs and tests."""
        return self if count is None else Split(self.images[:count], self.labels[:count])

    def to(self, device: torch.device | str) -> Split:
        """The split on `device`: on a GPU the whole uint8 set (150 MB) lives there and is augmented there."""
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class Cifar10:
    """train: what the optimiser sees; holdout: the tail of the training split, kept out of training for
    validation and pruning calibration; test: the official 10,000-image test set. identity: what the splits were
    read from ({"files": {batch file: SHA-256}, "holdout_images"}), which a resumed run must be given again."""

    train: Split
    holdout: Split
    test: Split
    identity: dict[str, Any] = field(default_factory=dict, compare=False)


# --- locating and downloading -------------------------------------------------------------------------------------

def data_folder(data_dir: str | Path | None = None, environ: Mapping[str, str] = os.environ) -> tuple[Path, str]:
    """The one folder to read, and who chose it: `--data-dir`, else `CIFAR10_DIR`, else the project's data/. A
    folder the user named is used or refused, never swapped for another one."""
    if data_dir:
        return Path(data_dir), "--data-dir"
    if environ.get("CIFAR10_DIR"):
        return Path(environ["CIFAR10_DIR"]), "CIFAR10_DIR"
    return PROJECT_DATA_DIR, "the project's data folder"


def missing_batches(folder: Path) -> list[str]:
    return [name for name in (*TRAIN_FILES, TEST_FILE) if not (folder / name).is_file()]


def locate_cifar10(data_dir: str | Path | None = None, download: bool = True,
                   environ: Mapping[str, str] = os.environ, url: str = CIFAR10_URL,
                   md5: str = CIFAR10_ARCHIVE_MD5) -> Path:
    """The folder holding the batch files (data_folder's choice). A folder that does not exist or is empty is
    downloaded into when `download`; one holding other files is never touched: the error names what it lacks."""
    folder, chosen_by = data_folder(data_dir, environ)
    if folder.is_symlink() and not folder.is_dir() or folder.exists() and not folder.is_dir():
        raise PrunedroidError(f"CIFAR-10 folder {folder} (from {chosen_by}) is not a folder (a file, a FIFO or a "
                              f"broken or looping link); point it at the folder holding {', '.join(TRAIN_FILES)} and "
                              f"{TEST_FILE}, or at a new folder to download them into")
    missing = missing_batches(folder)
    if not missing:
        return folder
    fix = (f"point --data-dir or CIFAR10_DIR at a folder holding {', '.join(TRAIN_FILES)} and {TEST_FILE} "
           f"(the unpacked '{ARCHIVE_FOLDER}' of {url})")
    if folder.is_dir() and any(folder.iterdir()):
        raise PrunedroidError(f"CIFAR-10 folder {folder} (from {chosen_by}) lacks {', '.join(missing)}; restore "
                              f"{'them' if len(missing) > 1 else 'it'}, empty the folder to have it downloaded, or "
                              f"{fix}.")
    if not download:
        raise PrunedroidError(f"CIFAR-10 not found in {folder} (from {chosen_by}); {fix}.")
    try:
        download_cifar10(folder, url=url, md5=md5)
    except (OSError, PrunedroidError) as err:
        raise PrunedroidError(f"CIFAR-10 not found in {folder} (from {chosen_by}) and the download failed: {err}; "
                              f"{fix}, or rerun with internet access.") from err
    return folder


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_cifar10(target: Path, url: str = CIFAR10_URL, md5: str = CIFAR10_ARCHIVE_MD5) -> None:
    """Fetch the archive, check its MD5, unpack, and move the batch folder to `target` in one rename, so an
    interrupted download never leaves a folder that looks complete."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".cifar10-download-") as scratch:
        archive = Path(scratch) / "cifar-10-python.tar.gz"
        print(f"downloading CIFAR-10 from {url} ...", flush=True)
        with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
            shutil.copyfileobj(response, out)
        actual = file_md5(archive)
        if actual != md5:
            raise PrunedroidError(f"downloaded archive has MD5 {actual}, expected {md5} (corrupted or not CIFAR-10)")
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(scratch, filter="data")
        unpacked = Path(scratch) / ARCHIVE_FOLDER
        if missing_batches(unpacked):
            raise PrunedroidError(f"archive from {url} has no complete '{ARCHIVE_FOLDER}' folder")
        if target.is_dir():
            target.rmdir()  # empty (locate_cifar10 downloads into no other); fails rather than delete a user's files
        os.replace(unpacked, target)


# --- reading ------------------------------------------------------------------------------------------------------

class _BatchUnpickler(pickle.Unpickler):
    """Accepts only what the official batch files contain: dicts, lists, strings, ints and numpy arrays.
    Any other global (os.system, builtins.eval, ...) is refused, so a planted file cannot run code."""

    def find_class(self, module: str, name: str):
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            return np._core.multiarray._reconstruct  # type: ignore[attr-defined]  # numpy >= 2 (pyproject): numpy 1.x named it numpy.core
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"refusing to load {module!r}.{name!r}")


def read_batch(path: Path) -> Split:
    """One official batch file -> Split of 10,000 images, validated."""
    return _read_batch(path)[0]


def _read_batch(path: Path) -> tuple[Split, str]:
    """One official batch file -> (Split of 10,000 images, validated; the file's SHA-256)."""
    path = Path(path)
    if not path.is_file():
        raise PrunedroidError(f"CIFAR-10 batch file missing: {path}. Re-download the dataset or fix --data-dir.")
    with open(open_regular(path), "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_BATCH_BYTES:
            raise PrunedroidError(f"{path} has {size} bytes, larger than any CIFAR-10 batch ({MAX_BATCH_BYTES} at "
                                  f"most): it is not from the official archive - delete it and re-download")
        raw = handle.read(MAX_BATCH_BYTES + 1)
    try:
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # truncated, foreign or malicious: all mean "this is not a CIFAR-10 batch"
        raise PrunedroidError(f"{path} is not a readable CIFAR-10 batch ({type(err).__name__}: {err}); "
                              f"the file is truncated or not from the official archive - delete it and re-download."
                              ) from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise PrunedroidError(f"{path} is not a CIFAR-10 batch: expected a dict with b'data' and b'labels'")
    data, labels = batch[b"data"], class_indices(batch[b"labels"])
    expected = (IMAGES_PER_BATCH_FILE, int(np.prod(IMAGE_SHAPE)))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != expected:
        raise PrunedroidError(f"{path}: b'data' should be uint8 of shape {expected}, "
                              f"got {getattr(data, 'dtype', type(data))} {getattr(data, 'shape', '')}")
    if labels is None or labels.shape != (IMAGES_PER_BATCH_FILE,):
        raise PrunedroidError(f"{path}: b'labels' should be {IMAGES_PER_BATCH_FILE} integers in 0..{len(CLASSES) - 1}")
    images = torch.from_numpy(data.reshape(-1, *IMAGE_SHAPE).copy())
    return Split(images, torch.from_numpy(labels)), hashlib.sha256(raw).hexdigest()


def class_indices(labels: object) -> np.ndarray | None:
    """`labels` as int64 class indices if it is a list of whole numbers (not floats, strings or booleans) or an
    integer array, each in 0..9; else None."""
    if isinstance(labels, np.ndarray) and labels.dtype.kind in "iu" and labels.ndim == 1:
        values = labels
    elif isinstance(labels, list) and all(type(label) is int for label in labels):
        values = np.array([label if 0 <= label < len(CLASSES) else -1 for label in labels], dtype=np.int64)
    else:
        return None
    if len(values) and (values.min() < 0 or values.max() >= len(CLASSES)):
        return None
    return values.astype(np.int64)


def concat(splits: list[Split]) -> Split:
    return Split(torch.cat([s.images for s in splits]), torch.cat([s.labels for s in splits]))


def load_test(data_dir: str | Path | None = None, download: bool = True) -> Split:
    """Only the official 10,000-image test set, for evaluation."""
    return read_batch(locate_cifar10(data_dir, download=download) / TEST_FILE)


def load_cifar10(data_dir: str | Path | None = None, holdout: int = 5000, download: bool = True) -> Cifar10:
    """Train/holdout/test splits. The holdout is the last `holdout` training images: fixed, so every stage (training,
    pruning calibration, fine-tuning) agrees on it whatever seed it runs with."""
    folder = locate_cifar10(data_dir, download=download)
    read = {name: _read_batch(folder / name) for name in (*TRAIN_FILES, TEST_FILE)}
    full_train = concat([read[name][0] for name in TRAIN_FILES])
    if not 0 <= holdout < len(full_train):
        raise PrunedroidError(f"holdout must be in 0..{len(full_train) - 1}, got {holdout}")
    cut = len(full_train) - holdout
    return Cifar10(train=Split(full_train.images[:cut], full_train.labels[:cut]),
                   holdout=Split(full_train.images[cut:], full_train.labels[cut:]), test=read[TEST_FILE][0],
                   identity={"files": {name: sha256 for name, (_, sha256) in read.items()}, "holdout_images": holdout})


# --- batches and augmentation -------------------------------------------------------------------------------------

def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 normalised with the CIFAR-10 mean/std."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - mean) / std


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero-padding by `pad` pixels, then a random horizontal flip, for a whole uint8 batch at
    once (one gather instead of N per-image transforms). (N, 3, H, W) -> same shape.

    The random draws come from a CPU generator whatever the device, so CPU and GPU runs see the same crops."""
    n, _, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.arange(width)
    cols = torch.where(flip[:, None], cols.flip(0), cols)  # a flip is a reversed column order
    rows = (dy[:, None] + torch.arange(height)).to(images.device)
    cols = (dx[:, None] + cols).to(images.device)
    n_index, c_index = torch.arange(n, device=images.device), torch.arange(3, device=images.device)
    return padded[n_index[:, None, None, None], c_index[None, :, None, None], rows[:, None, :, None],
                  cols[:, None, None, :]]


def batches(split: Split, batch_size: int, *, generator: torch.Generator | None = None, train: bool = False,
            channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yields (float32 (B, 3, 32, 32) normalised images, int64 (B,) labels).

    train=True shuffles, augments and drops the last incomplete batch (BatchNorm dislikes tiny batches); it needs
    `generator`, which alone decides order and augmentation, so a seeded epoch is reproducible.
    """
    count = len(split)
    shuffled: tuple[torch.Tensor, torch.Generator] | None = None  # (order, generator) when training
    if train:
        if generator is None:
            raise ValueError("train=True needs a generator")
        shuffled = torch.randperm(count, generator=generator).to(split.images.device), generator
        stops = range(batch_size, count + 1, batch_size)
    else:
        stops = range(batch_size, count + batch_size, batch_size)
    for stop in stops:
        index = slice(stop - batch_size, min(stop, count))
        if shuffled is None:
            images, labels = split.images[index], split.labels[index]
        else:
            order, rng = shuffled
            images, labels = augment(split.images[order[index]], rng), split.labels[order[index]]
        images = normalize(images)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        yield images, labels
