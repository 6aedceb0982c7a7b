"""An APK's zip, written by hand because its layout matters to Android: native libraries stored uncompressed with
their data at 16 KB boundaries (the platform maps them straight from the APK; 16 KB covers phones with 4 KB and
16 KB pages), other stored files (resources.arsc, the model) at 4 bytes. Each aligned entry carries the alignment
extra field (id 0xD935) zipalign and the Android Gradle Plugin write, so apksigner keeps the alignment when it
signs. Timestamps are fixed: the same inputs give the same bytes."""
from __future__ import annotations

import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

PAGE_ALIGNMENT = 16384  # bytes: Android 15's 16 KB pages (a multiple of 4 KB, so 4 KB-page phones map it too)
STORED_ALIGNMENT = 4  # bytes: what the platform needs of other uncompressed entries (resources.arsc since API 30)
ALIGNMENT_EXTRA_ID = 0xD935
DOS_TIME, DOS_DATE = 0, (1981 - 1980) << 9 | 1 << 5 | 1  # 1981-01-01 00:00, as reproducible builds use
MAX_ZIP_BYTES = 0xFFFFFFFF  # no zip64: an APK entry or archive past 4 GiB is not installable anyway


@dataclass(frozen=True)
class Entry:
    """One file of the APK: `name` inside it, its bytes, and whether it is stored uncompressed."""

    name: str
    data: bytes
    stored: bool

    @property
    def alignment(self) -> int:
        if not self.stored:
            return 1
        return PAGE_ALIGNMENT if self.name.endswith(".so") else STORED_ALIGNMENT


def _alignment_extra(offset: int, name: bytes, alignment: int) -> bytes:
    """The extra field that puts the entry's data, after a local header at `offset`, on an `alignment` boundary."""
    if alignment == 1:
        return b""
    before_extra = offset + 30 + len(name)
    padding = (-(before_extra + 6)) % alignment  # 6: the field's id, size and alignment words
    return struct.pack("<HHH", ALIGNMENT_EXTRA_ID, 2 + padding, alignment) + bytes(padding)


def _deflate(data: bytes) -> bytes:
    """Raw deflate (no zlib header), as zip entries hold it."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def write_apk(entries: list[Entry], path: Path) -> None:
    """Writes `entries`, in order, as an unsigned APK at `path`."""
    names = [entry.name for entry in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate APK entries: {sorted({n for n in names if names.count(n) > 1})}")
    central = []
    with path.open("wb") as out:
        for entry in entries:
            offset = out.tell()
            name = entry.name.encode("utf-8")
            body = entry.data if entry.stored else _deflate(entry.data)
            method = 0 if entry.stored else 8
            crc = zlib.crc32(entry.data)
            extra = _alignment_extra(offset, name, entry.alignment)
            fields = struct.pack("<HHHHHIII", 20, 0x800, method, DOS_TIME, DOS_DATE, crc, len(body), len(entry.data))
            out.write(b"PK\x03\x04" + fields + struct.pack("<HH", len(name), len(extra)) + name + extra + body)
            central.append(b"PK\x01\x02" + struct.pack("<H", 20) + fields
                           + struct.pack("<HHHHHII", len(name), 0, 0, 0, 0, 0, offset) + name)
        directory_at = out.tell()
        directory = b"".join(central)
        out.write(directory + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, len(central), len(central),
                                                           len(directory), directory_at, 0))
        if out.tell() > MAX_ZIP_BYTES:
            raise ValueError(f"{path} would be {out.tell()} bytes, past the zip format's 4 GiB")


def data_offsets(apk: Path) -> dict[str, int]:
    """Where each entry's data starts in the file (bytes): its local header's offset plus that header's length,
    read from the local header itself (its extra field may differ from the central directory's)."""
    offsets = {}
    with zipfile.ZipFile(apk) as zipped, apk.open("rb") as raw:
        for info in zipped.infolist():
            raw.seek(info.header_offset + 26)
            name_length, extra_length = struct.unpack("<HH", raw.read(4))
            offsets[info.filename] = info.header_offset + 30 + name_length + extra_length
    return offsets


def entries_of(archive: Path) -> list[Entry]:
    """The files of a zip (e.g. aapt2's resources.apk), as entries that keep their compression."""
    with zipfile.ZipFile(archive) as zipped:
        return [Entry(info.filename, zipped.read(info), info.compress_type == zipfile.ZIP_STORED)
                for info in zipped.infolist() if not info.is_dir()]
