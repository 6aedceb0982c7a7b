"""The sidecar `invoke export` writes beside its model files (<name>.json) is a contract: every reader (bench,
build-apk, bench-device) checks its schema - types, ranges, finite numbers - and checks each file it names, which
must sit beside it and match its recorded size and SHA-256, before any runtime, push or build sees that file."""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunedroid.deploy.formats import FORMATS, format_of, int8_formats
from prunedroid.errors import PrunedroidError
from prunedroid.files import beside, file_sha256, read_json
from prunedroid.options import is_finite_number

MAX_COUNT = 10**15  # MACs and parameters: far above any CNN a phone runs; more is damage
MAX_FILE_BYTES = 1 << 34  # 16 GiB
HEX64 = re.compile(r"[0-9a-f]{64}")
VERSION = re.compile(r"\d+\.\d+(\.\d+)?([.+-][0-9A-Za-z.+-]*)?")


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
    problems = _files_problems(sidecar, [k for k, entry in FORMATS.items() if entry.required or k in sidecar], "")
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
            problems += _files_problems(int8, [e.kind for e in int8_formats() if e.int8_required or e.kind in int8],
                                        "int8.")
    return problems


@dataclass(frozen=True)
class ModelFile:
    """A file a sidecar names: a plain name beside the sidecar, and its size (bytes) and SHA-256 as exported."""

    name: str
    size: int
    sha256: str


def _model_files(entry: dict[str, Any], kinds: Sequence[str]) -> dict[str, ModelFile]:
    return {kind: ModelFile(entry[kind], entry[f"{kind}_bytes"], entry[f"{kind}_sha256"]) for kind in kinds
            if kind in entry}


@dataclass(frozen=True)
class Sidecar:
    """The sidecar `invoke export` writes beside its files (<name>.json), its schema checked: what its readers use,
    typed. `record` is the whole JSON as written (the app's model.json and the reports carry its other entries).

    files: format kind (prunedroid/deploy/formats.py) -> the file: "ptl", "onnx", "pte" (an export from before
    ExecuTorch support has no "pte"); int8: "ptl", "onnx" and "pte" of `invoke export --quantize int8` (no "ptl"
    before the int8 .ptl), empty otherwise; input_shape: (1, channels, height, width); dynamic_batch: the ONNX file
    takes any batch size; executorch_version: the ExecuTorch that wrote the .pte."""

    path: Path
    files: dict[str, ModelFile]
    int8: dict[str, ModelFile]
    checkpoint: Path
    checkpoint_sha256: str
    arch: dict[str, Any]
    classes: tuple[str, ...]
    input_shape: tuple[int, ...]
    macs: int
    params: int
    dynamic_batch: bool
    executorch_version: str | None
    record: dict[str, Any]

    @classmethod
    def from_record(cls, path: str | Path, record: Any) -> Sidecar:
        """The sidecar at `path` holding `record` (parsed JSON), or an error naming what is wrong with it."""
        problems = schema_problems(record)
        if problems:
            raise PrunedroidError(f"{path} is not a sound sidecar of `invoke export` (wanted: "
                                  f"{'; '.join(problems[:6])}{'; ...' if len(problems) > 6 else ''}); export the "
                                  f"model again")
        int8_kinds = [entry.kind for entry in int8_formats()]
        return cls(path=Path(path), files=_model_files(record, list(FORMATS)),
                   int8=_model_files(record.get("int8") or {}, int8_kinds), checkpoint=Path(record["checkpoint"]),
                   checkpoint_sha256=record["checkpoint_sha256"], arch=record["arch"],
                   classes=tuple(record["classes"]), input_shape=tuple(record["input_shape"]), macs=record["macs"],
                   params=record["params"], dynamic_batch=record["onnx_export"]["dynamic_batch"],
                   executorch_version=(record.get("executorch") or {}).get("version"), record=record)

    @classmethod
    def read(cls, path: str | Path) -> Sidecar:
        """The sidecar `invoke export` wrote at `path`, its schema checked."""
        path = existing_sidecar(path)
        return cls.from_record(path, read_json(path, "a sidecar written by `invoke export`"))

    @property
    def name(self) -> str:
        """The export's name: the sidecar's file name without .json (results are keyed by it)."""
        return self.path.stem

    def model_file(self, kind: str, int8: bool = False) -> Path:
        """The `kind` file ("ptl", "onnx", "pte"; with int8, the int8 entry's) this sidecar names, once it is a
        plain name beside the sidecar with the recorded size, format magic and SHA-256: the only way a reader gets
        a model file, so no runtime, push or build sees a file the export did not write."""
        entries = self.int8 if int8 else self.files
        if int8 and not entries:
            raise PrunedroidError(f"{self.path} has no int8 model; export again with --quantize int8")
        if kind not in entries:
            raise PrunedroidError(f"{self.path} names no .{kind} (exported by an older version); export again")
        entry = entries[kind]
        label = f"{self.path.name}'s {'int8.' if int8 else ''}{kind}"
        path = beside(self.path.parent, entry.name, label)
        if path.suffix != f".{kind}":
            raise PrunedroidError(f"{label} names {path.name}, not a .{kind} file; export again")
        stale = (f"{path} is not the file {self.path.name} describes (changed, replaced or half-written since the "
                 f"export)")
        if not path.is_file() or path.is_symlink():
            raise PrunedroidError(f"{path} is missing (or not a plain file); export again")
        if path.stat().st_size != entry.size:
            raise PrunedroidError(f"{stale}: {path.stat().st_size} bytes, the sidecar says {entry.size}; export again")
        with open(path, "rb") as handle:
            head = handle.read(8)
        magic = format_of(path).magic
        if magic is not None and not magic(head):
            raise PrunedroidError(f"{path} is not a {path.suffix} file (its first bytes are not the format's); "
                                  "export again")
        if file_sha256(path) != entry.sha256:
            raise PrunedroidError(f"{stale}: its SHA-256 differs; export again")
        return path

    def exported_checkpoint(self) -> Path:
        """The checkpoint this was exported from, once it still has the recorded SHA-256: a sidecar whose checkpoint
        moved or changed would mix two models in one benchmark row."""
        if not self.checkpoint.is_file() or file_sha256(self.checkpoint) != self.checkpoint_sha256:
            raise PrunedroidError(f"{self.checkpoint}, the checkpoint {self.path} was exported from, is missing or "
                                  f"has changed since the export; export the checkpoint again")
        return self.checkpoint


def unique_names(paths: Sequence[Path], what: str = "--models") -> None:
    """Refuses two sidecars with one file name: results are keyed by it, so one model would silently replace the
    other."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise PrunedroidError(f"{what} names two models called {path.stem!r} ({seen[path.stem]} and {path}): "
                                  f"results are keyed by the file name; export one under another --name")
        seen[path.stem] = path
