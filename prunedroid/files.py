"""Files as a hostile user can hand them over: names confined to their folder, JSON read within a size limit, writes
that land whole (one file or several as a unit) and folders locked while a process writes them."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prunedroid.errors import PrunedroidError

MAX_JSON_BYTES = 16 << 20  # a sidecar, report or latency table is kilobytes; more is damage or an attack
TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # what atomic_path names its temporaries
MAX_NAME_BYTES = 200  # leaves room in a file system's 255 bytes for the suffixes added to a name
# Control, format (bidirectional overrides, zero-width marks, the BOM), line and paragraph separators, private use,
# surrogates and unassigned code points: characters that end a line or change how a name reads without being seen.
INVISIBLE = frozenset({"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"})


def plain_name(name: str, option: str) -> str:
    """`name` if it is one plain file or folder name (no separator, not '.', '..' or hidden, no control or invisible
    characters, no space at either end), so that joined to a folder it stays inside that folder and reads as it is;
    else an error naming `option`."""
    if (not isinstance(name, str) or name in ("", ".", "..") or name.startswith(".") or "/" in name or "\\" in name
            or name != name.strip() or any(unicodedata.category(ch) in INVISIBLE for ch in name)
            or len(name.encode("utf-8", "replace")) > MAX_NAME_BYTES):
        raise PrunedroidError(f"{option} must be a plain name (no '/', not '.' or '..', not hidden, no control or "
                              f"invisible characters, no space at either end, at most {MAX_NAME_BYTES} bytes), got "
                              f"{name!r}; use a name such as 'quick-l1'")
    return name


def holds(folder: str | Path, path: str | Path) -> bool:
    """Whether `path` is `folder` or lies below it, links resolved: what writing or emptying `folder` may touch."""
    inside, target = Path(path).resolve(), Path(folder).resolve()
    return inside == target or target in inside.parents


def refuse_holding(out: str | Path, inputs: dict[str, str | Path | None], out_option: str = "--out") -> None:
    """Refuses an output folder that holds one of a task's `inputs` (option -> path; None: not given): writing,
    replacing or cleaning it could destroy what the task reads."""
    for option, path in inputs.items():
        if path is not None and holds(out, path):
            raise PrunedroidError(f"{out_option} {out} holds {option} {path}, which writing there could replace or "
                                  f"remove: choose an {out_option} outside it")


def links_below(folder: str | Path) -> list[Path]:
    """The symbolic links anywhere below `folder` (not followed)."""
    found = []
    for root, dirs, files in os.walk(folder):
        found += [Path(root) / name for name in dirs + files if (Path(root) / name).is_symlink()]
    return found


def open_regular(path: Path) -> int:
    """A read descriptor of `path` if it is a regular file; a FIFO, device or folder is refused without blocking."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise PrunedroidError(f"{path} is not a regular file (a FIFO, device or folder): name a file")
    return descriptor


def beside(folder: Path, name: object, what: str) -> Path:
    """`folder`/`name` for a file name read from a file in `folder` (a sidecar's model files): the name must be plain,
    so a planted '../../etc/passwd' or absolute path never leaves the folder."""
    if not isinstance(name, str):
        raise PrunedroidError(f"{what} must be a file name, got {name!r}")
    return folder / plain_name(name, what)


def read_json(path: str | Path, what: str, limit: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in `path`, read only if the file is at most `limit` bytes and is UTF-8 JSON without NaN or
    infinities (which JSON does not have, though Python writes them); else an error saying what `what` should be."""
    path = Path(path)
    with open(open_regular(path), "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise PrunedroidError(f"{path} is larger than {limit >> 20} MiB: not {what}")

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not a JSON number")

    try:
        return json.loads(data.decode("utf-8"), parse_constant=refuse)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise PrunedroidError(f"{path} is not {what} (not valid JSON: {str(err).splitlines()[0][:200]})") from None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _temporary(path: Path) -> Path:
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    # Created as open() would (mode 0o666 less the umask), not 0o600 as mkstemp's: results are for sharing.
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    return tmp


def check_writable(folder: str | Path) -> None:
    """Makes `folder` and writes and removes a temporary file in it, so that a task whose results go there fails
    before measuring anything (OSError: the folder is a file, read-only, full) rather than after. A folder it had to
    make is removed again: the results make it when they are written."""
    folder = Path(folder)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    _temporary(folder / "probe").unlink()
    if made:
        folder.rmdir()


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Yields one temporary path beside each of `paths`; when the block succeeds they are fsynced and renamed over
    `paths` in order (so the last is the one to land last: put a sidecar that describes the others there), and on
    failure all are removed, so a full disk or an error mid-way leaves every old file as it was. A process killed
    mid-way leaves temporaries that the next folder_lock on the folder removes."""
    targets = [Path(p) for p in paths]
    temporaries: list[Path] = []
    try:
        for path in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporaries.append(_temporary(path))
        yield temporaries
        for tmp in temporaries:
            _fsync(tmp)
        for tmp, path in zip(temporaries, targets):
            os.replace(tmp, path)
    finally:
        for tmp in temporaries:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success it is fsynced and renamed over `path` in one step, on
    failure removed. Readers see the old file or the new one, never half of one."""
    with atomic_paths([path]) as (tmp,):
        yield tmp


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Creates `folder` and holds an exclusive lock on the folder itself (flock on its descriptor: no lock file is
    left behind) while the block runs, so two processes never write one folder at once - the second is refused.
    The OS drops the lock when its holder exits, however it exits, so a killed run leaves no stale lock; the
    temporaries it left (atomic_path's) are removed when the lock is next taken, since no writer can own them then.
    A folder this call created is removed again if the block leaves it empty (it failed before writing anything),
    while the lock is still held."""
    folder = Path(folder)
    descriptor, created = _locked(folder)
    try:
        for stale in folder.iterdir():
            if TEMPORARY.match(stale.name) and stale.is_file() and not stale.is_symlink():
                stale.unlink(missing_ok=True)
        yield folder
    finally:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        os.close(descriptor)


def _locked(folder: Path, attempts: int = 5) -> tuple[int, bool]:
    """A descriptor of `folder` holding its exclusive lock, and whether this call created the folder. Only the
    process whose mkdir made the folder counts as its creator (two processes may both find it missing), and a lock
    taken on a folder its previous holder removed meanwhile is let go and taken again on the folder now there."""
    for _ in range(attempts):
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir()
            created = True
        except FileExistsError:
            created = False
        if not folder.is_dir():
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise PrunedroidError(f"{folder} is being written by another prunedroid process; wait for it to finish, "
                                  f"or write to another folder (--out / --name)") from None
        try:
            now = os.stat(folder)
        except FileNotFoundError:
            now = None
        held = os.fstat(descriptor)
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            return descriptor, created
        os.close(descriptor)
    raise PrunedroidError(f"{folder} kept being removed and made again by other processes; write to another folder")
