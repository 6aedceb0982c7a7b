"""The sidecar `invoke export` writes beside its model files (<name>.json) is a contract: every reader (bench,
build-apk, bench-device) checks its schema - types, ranges, finite numbers - and checks each file it names, which
must sit beside it and match its recorded size and SHA-256, before any runtime, push or build sees that file."""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prunedroid.errors import PrunedroidError
from prunedroid.files import beside, file_sha256, read_json
from prunedroid.options import is_finite_number

MAX_COUNT = 10**15  # MACs and parameters: far above any CNN a phone runs; more is damage
MAX_FILE_BYTES = 1 << 34  # 16 GiB
HEX64 = re.compile(r"[0-9a-f]{64}")
VERSION = re.compile(r"\d+\.\d+(\.\d+)?([.+-][0-9A-Za-z.+-]*)?")
# The first bytes each format starts with: a .ptl is a zip archive; an ExecuTorch program carries the flatbuffer
# identifier "ET" and two digits at offset 4. ONNX (protobuf) has no magic: its runtime check is the probe's.
MAGIC: dict[str, Callable[[bytes], bool]] = {
    ".ptl": lambda head: head[:4] == b"PK\x03\x04",
    ".pte": lambda head: len(head) >= 8 and head[4:6] == b"ET" and head[6:8].isdigit(),
}
FILE_KINDS = ("ptl", "onnx", "pte")  # top-level files; the int8 entry names its own pte and onnx


def existing_sidecar(path: str | Path) -> Path:
    """`path`, or an error saying no export is there."""
    path = Path(path)
    if not path.is_file():
        raise PrunedroidError(f"no exported model at {path}; run `invoke export --checkpoint <checkpoint.pt>` first "
                              f"and pass the .json it writes")
    return path


def _is_count(value: Any, low: int = 0, high: int = MAX_COUNT) -> bool:
    return type(value) is int and low <= value <= high


def _is_number(value: Any, low: float, high: float) -> bool:
    return is_finite_number(value) and low <= value <= high


def _files_problems(entry: dict, kinds: Sequence[str], where: str) -> list[str]:
    problems = []
    for kind in kinds:
        if not isinstance(entry.get(kind), str):
            problems.append(f"{where}{kind}: a file name")
        if not _is_count(entry.get(f"{kind}_bytes"), 1, MAX_FILE_BYTES):
            problems.append(f"{where}{kind}_bytes: a size in bytes")
        if not isinstance(entry.get(f"{kind}_sha256"), str) or not HEX64.fullmatch(entry[f"{kind}_sha256"]):
            problems.append(f"{where}{kind}_sha256: a SHA-256 hex digest")
    return problems


def schema_problems(sidecar: Any) -> list[str]:
    """What is wrong with a parsed sidecar, as 'key: what it should be' (empty when it is sound)."""
    if not isinstance(sidecar, dict):
        return ["the whole file: a JSON object"]
    problems = _files_problems(sidecar, [k for k in FILE_KINDS if k != "pte" or "pte" in sidecar], "")
    checkpoint = sidecar.get("checkpoint")
    if not isinstance(checkpoint, str) or not checkpoint or any(ord(ch) < 32 for ch in checkpoint):
        problems.append("checkpoint: the exported checkpoint's path")
    if not isinstance(sidecar.get("checkpoint_sha256"), str) or not HEX64.fullmatch(sidecar["checkpoint_sha256"]):
        problems.append("checkpoint_sha256: a SHA-256 hex digest")
    for key in ("macs", "params"):
        if not _is_count(sidecar.get(key), 1):
            problems.append(f"{key}: a whole number in 1..{MAX_COUNT:.0e}")
    classes = sidecar.get("classes")
    if not isinstance(classes, list) or not 1 <= len(classes) <= 10_000 or not all(
            isinstance(c, str) and c and "\n" not in c for c in classes):
        problems.append("classes: a list of class names")
    shape = sidecar.get("input_shape")
    if not isinstance(shape, list) or len(shape) != 4 or shape[0] != 1 or not all(
            _is_count(s, 1, 4096) for s in shape):
        problems.append("input_shape: [1, channels, height, width]")
    channels = shape[1] if isinstance(shape, list) and len(shape) == 4 else None
    for key, low in (("mean", -1e6), ("std", 1e-12)):
        values = sidecar.get(key)
        if not isinstance(values, list) or len(values) != channels or not all(_is_number(v, low, 1e6) for v in values):
            problems.append(f"{key}: one finite number per input channel" + (" (above 0)" if key == "std" else ""))
    if not _is_number(sidecar.get("pixel_scale"), 1e-12, 1e6):
        problems.append("pixel_scale: a finite number above 0")
    if sidecar.get("test_top1") is not None and not _is_number(sidecar["test_top1"], 0, 1):
        problems.append("test_top1: a fraction in 0..1 or null")
    if not isinstance(sidecar.get("arch"), dict):
        problems.append("arch: the architecture description")
    onnx_export = sidecar.get("onnx_export")
    if not isinstance(onnx_export, dict) or type(onnx_export.get("dynamic_batch")) is not bool:
        problems.append("onnx_export.dynamic_batch: true or false")
    if "pte" in sidecar:
        executorch = sidecar.get("executorch")
        if not isinstance(executorch, dict) or not isinstance(executorch.get("version"), str) \
                or not VERSION.fullmatch(executorch["version"]):
            problems.append("executorch.version: a version such as 1.5.1")
    int8 = sidecar.get("int8")
    if int8 is not None:
        if not isinstance(int8, dict):
            problems.append("int8: null or the int8 files' entry")
        else:
            problems += _files_problems(int8, ("pte", "onnx"), "int8.")
    return problems


def read_sidecar(path: str | Path) -> dict:
    """The sidecar JSON `invoke export` wrote at `path`, its schema checked, or an error naming what is wrong."""
    path = existing_sidecar(path)
    sidecar = read_json(path, "a sidecar written by `invoke export`")
    problems = schema_problems(sidecar)
    if problems:
        raise PrunedroidError(f"{path} is not a sound sidecar of `invoke export` (wanted: {'; '.join(problems[:6])}"
                              f"{'; ...' if len(problems) > 6 else ''}); export the model again")
    return sidecar


def model_file(sidecar_path: Path, sidecar: dict, kind: str, int8: bool = False) -> Path:
    """The `kind` file ("ptl", "onnx", "pte"; with int8, the int8 entry's) that the sidecar at `sidecar_path` names,
    once it is a plain name beside the sidecar with the recorded size, format magic and SHA-256: the only way a
    reader gets a model file, so no runtime, push or build sees a file the export did not write."""
    entry = sidecar["int8"] if int8 else sidecar
    if int8 and not entry:
        raise PrunedroidError(f"{sidecar_path} has no int8 model; export again with --quantize int8")
    if kind not in entry:
        raise PrunedroidError(f"{sidecar_path} names no .{kind} (exported by an older version); export again")
    label = f"{sidecar_path.name}'s {'int8.' if int8 else ''}{kind}"
    path = beside(sidecar_path.parent, entry[kind], label)
    if path.suffix != f".{kind}":
        raise PrunedroidError(f"{label} names {path.name}, not a .{kind} file; export again")
    stale = f"{path} is not the file {sidecar_path.name} describes (changed, replaced or half-written since the export)"
    if not path.is_file() or path.is_symlink():
        raise PrunedroidError(f"{path} is missing (or not a plain file); export again")
    if path.stat().st_size != entry[f"{kind}_bytes"]:
        raise PrunedroidError(f"{stale}: {path.stat().st_size} bytes, the sidecar says {entry[f'{kind}_bytes']}; "
                              f"export again")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if path.suffix in MAGIC and not MAGIC[path.suffix](head):
        raise PrunedroidError(f"{path} is not a {path.suffix} file (its first bytes are not the format's); export "
                              "again")
    if file_sha256(path) != entry[f"{kind}_sha256"]:
        raise PrunedroidError(f"{stale}: its SHA-256 differs; export again")
    return path


def sidecar_checkpoint(sidecar_path: Path, sidecar: dict) -> Path:
    """The checkpoint the sidecar was exported from, once it still has the recorded SHA-256: a sidecar whose
    checkpoint moved or changed would mix two models in one benchmark row."""
    path = Path(sidecar["checkpoint"])
    if not path.is_file() or file_sha256(path) != sidecar["checkpoint_sha256"]:
        raise PrunedroidError(f"{path}, the checkpoint {sidecar_path} was exported from, is missing or has changed "
                              f"since the export; export the checkpoint again")
    return path


def unique_names(paths: Sequence[Path], what: str = "--models") -> None:
    """Refuses two sidecars with one file name: results are keyed by it, so one model would silently replace the
    other."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise PrunedroidError(f"{what} names two models called {path.stem!r} ({seen[path.stem]} and {path}): "
                                  f"results are keyed by the file name; export one under another --name")
        seen[path.stem] = path
