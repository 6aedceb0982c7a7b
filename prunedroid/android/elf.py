"""The native libraries inside an Android archive - an AAR (jni/<abi>/*.so) or an APK (lib/<abi>/*.so) - and whether
each can load on a phone with 16 KB memory pages: Android maps an ELF shared library's loadable segments at their
own alignment, so every PT_LOAD segment must be aligned to at least 16 KB (0x4000). Google Play requires it of apps
targeting Android 15 and newer."""
from __future__ import annotations

import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from prunedroid.errors import PrunedroidError

PAGE_16K = 0x4000
PT_LOAD = 1
LIBRARY = re.compile(r"^(?:jni|lib)/([\w-]+)/([^/]+\.so)$")


@dataclass(frozen=True)
class NativeLibrary:
    abi: str
    name: str
    bytes: int  # uncompressed size of the .so
    load_alignment: int  # the smallest p_align of its PT_LOAD segments, in bytes

    @property
    def page_16k_ready(self) -> bool:
        return self.load_alignment >= PAGE_16K


def load_alignment(elf: bytes, name: str = "the library") -> int:
    """The smallest alignment (bytes) of an ELF file's loadable (PT_LOAD) segments; 32- or 64-bit, either byte
    order."""
    if elf[:4] != b"\x7fELF" or elf[4] not in (1, 2) or elf[5] not in (1, 2):
        raise PrunedroidError(f"{name} is not an ELF file")
    wide = elf[4] == 2
    order = "<" if elf[5] == 1 else ">"
    word, table_at, counts_at, align_at = ("Q", 0x20, 0x36, 48) if wide else ("I", 0x1C, 0x2A, 28)
    if len(elf) < counts_at + 4:
        raise PrunedroidError(f"{name} is a truncated ELF file")
    table = struct.unpack_from(order + word, elf, table_at)[0]
    entry_size, entries = struct.unpack_from(order + "HH", elf, counts_at)
    alignments = []
    for index in range(entries):
        start = table + index * entry_size
        if start + entry_size > len(elf):
            raise PrunedroidError(f"{name}'s program headers run past its end: a truncated ELF file")
        kind = struct.unpack_from(order + "I", elf, start)[0]
        if kind == PT_LOAD:
            alignments.append(struct.unpack_from(order + word, elf, start + align_at)[0])
    if not alignments:
        raise PrunedroidError(f"{name} has no loadable segment")
    return min(alignments)


def native_libraries(archive: Path) -> list[NativeLibrary]:
    """Every .so in an AAR or APK, by ABI then name."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            found = []
            for info in zipped.infolist():
                match = LIBRARY.match(info.filename)
                if match:
                    found.append(NativeLibrary(match.group(1), match.group(2), info.file_size,
                                               load_alignment(zipped.read(info), info.filename)))
    except zipfile.BadZipFile:
        raise PrunedroidError(f"{archive} is not an AAR or APK (not a zip archive)") from None
    return sorted(found, key=lambda library: (library.abi, library.name))
