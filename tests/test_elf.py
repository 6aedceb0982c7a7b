"""ELF load alignment of native libraries in AARs and APKs (16 KB pages), on hand-built ELF headers and on real
shared libraries checked against binutils' readelf."""
import re
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from prunedroid.android.elf import PAGE_16K, load_alignment, native_libraries
from prunedroid.errors import PrunedroidError


def elf(alignments: list[int], wide: bool = True, order: str = "<", kinds: list[int] | None = None) -> bytes:
    """A minimal ELF file: its header and one program header per alignment (PT_LOAD unless `kinds` says)."""
    kinds = kinds or [1] * len(alignments)
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1 if order == "<" else 2, 1]) + bytes(9)
    if wide:
        header = ident + struct.pack(order + "HHIQQQIHHHHHH", 3, 183, 1, 0, 64, 0, 0, 64, 56, len(alignments), 0, 0, 0)
        tables = b"".join(struct.pack(order + "IIQQQQQQ", kind, 5, 0, 0, 0, 0, 0, align)
                          for kind, align in zip(kinds, alignments))
    else:
        header = ident + struct.pack(order + "HHIIIIIHHHHHH", 3, 40, 1, 0, 52, 0, 0, 52, 32, len(alignments), 0, 0, 0)
        tables = b"".join(struct.pack(order + "IIIIIIII", kind, 0, 0, 0, 0, 0, 5, align)
                          for kind, align in zip(kinds, alignments))
    return header + tables


@pytest.mark.parametrize("wide", [True, False])
@pytest.mark.parametrize("order", ["<", ">"])
def test_the_smallest_load_segment_alignment_is_read(wide, order):
    assert load_alignment(elf([0x4000, 0x10000], wide, order)) == PAGE_16K
    assert load_alignment(elf([0x4000, 0x1000], wide, order)) == 0x1000
    # Only loadable segments count: a PT_GNU_STACK aligned to 16 bytes does not decide anything.
    assert load_alignment(elf([16, 0x4000], wide, order, kinds=[0x6474E551, 1])) == PAGE_16K


def test_what_is_not_a_whole_elf_file_is_refused_in_one_line():
    for data, problem in [(b"PK\x03\x04", "not an ELF file"), (elf([0x1000])[:80], "run past its end"),
                          (elf([0x1000])[:20], "truncated"), (elf([16], kinds=[4]), "no loadable segment")]:
        with pytest.raises(PrunedroidError, match=problem):
            load_alignment(data, "lib.so")


def test_an_archives_libraries_are_listed_by_abi(tmp_path):
    archive = tmp_path / "runtime.aar"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("jni/x86_64/libb.so", elf([0x1000]))
        zipped.writestr("jni/arm64-v8a/liba.so", elf([0x4000, 0x4000]))
        zipped.writestr("classes.jar", b"")
        zipped.writestr("lib/armeabi-v7a/libc.so", elf([0x1000], wide=False))  # an APK's layout
    found = native_libraries(archive)
    assert [(lib.abi, lib.name, lib.load_alignment, lib.page_16k_ready) for lib in found] == [
        ("arm64-v8a", "liba.so", 0x4000, True), ("armeabi-v7a", "libc.so", 0x1000, False),
        ("x86_64", "libb.so", 0x1000, False)]
    assert found[0].bytes == len(elf([0x4000, 0x4000]))
    (tmp_path / "not.aar").write_bytes(b"\0" * 4096)  # what a failed build leaves
    with pytest.raises(PrunedroidError, match="not an AAR or APK"):
        native_libraries(tmp_path / "not.aar")


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs binutils' readelf")
def test_real_libraries_agree_with_readelf():
    libraries = sorted((Path(torch.__file__).parent / "lib").glob("*.so*"))[:3]
    assert libraries
    for library in libraries:
        listing = subprocess.run(["readelf", "-lW", str(library)], capture_output=True, text=True, check=True).stdout
        expected = min(int(align, 16) for align in re.findall(r"^\s+LOAD\s.*\s(0x[0-9a-f]+)$", listing, flags=re.M))
        assert load_alignment(library.read_bytes(), library.name) == expected
