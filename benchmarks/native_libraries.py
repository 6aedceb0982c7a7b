"""Each runtime's native libraries as the app would package them: per ABI, every .so in the runtime's published AAR
(resolved by Maven from Maven Central, as `build-apk --builder direct` resolves it), its size and its ELF load
alignment - 16 KB-page phones need every PT_LOAD segment aligned to at least 0x4000 (Google Play requires it of apps
targeting Android 15+).

    python benchmarks/native_libraries.py --out benchmarks/results/native_libraries

Each runtime is read at the version app/build.gradle pins; one the Maven repositories here do not serve is a row
saying so.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from prunedroid.android import build as android
from prunedroid.android.apk import maven
from prunedroid.android.apk.gradle_file import read_gradle_app
from prunedroid.android.elf import PAGE_16K, native_libraries
from prunedroid.measure.report import markdown_table, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/native_libraries")
    args = parser.parse_args()
    runtimes, rows = {}, []
    for runtime, library in read_gradle_app(android.APP_DIR).runtime_library.items():
        with tempfile.TemporaryDirectory() as scratch:
            try:
                aar = maven.resolve([f"{library}:aar"], Path(scratch), "mvn", os.environ, transitive=False)[0]
            except maven.NotServed:
                runtimes[runtime] = {"library": library, "served": False}
                rows.append({"runtime": runtime, "library": library, "ABI": "-", "libraries": "not served here",
                             "MB in the APK (uncompressed)": "-", "16 KB pages": "unknown"})
                continue
            libraries = native_libraries(aar)
            runtimes[runtime] = {"library": library, "served": True, "aar_bytes": aar.stat().st_size,
                                 "libraries": [{"abi": lib.abi, "name": lib.name, "bytes": lib.bytes,
                                                "load_alignment": lib.load_alignment,
                                                "page_16k_ready": lib.page_16k_ready} for lib in libraries]}
        for abi in sorted({lib.abi for lib in libraries}):
            of_abi = [lib for lib in libraries if lib.abi == abi]
            rows.append({"runtime": runtime, "library": library, "ABI": abi,
                         "libraries": ", ".join(f"{lib.name} {lib.bytes / 1e6:.1f} MB, align "
                                                f"{lib.load_alignment:#x}" for lib in of_abi),
                         "MB in the APK (uncompressed)": f"{sum(lib.bytes for lib in of_abi) / 1e6:.1f}",
                         "16 KB pages": "ready" if all(lib.page_16k_ready for lib in of_abi) else "NOT ready"})
    write_results(args.out, {"page_16k": PAGE_16K, "runtimes": runtimes},
                  "Native libraries of each runtime's AAR: size and 16 KB page alignment",
                  markdown_table(rows, list(rows[0])), notes=NOTES)


NOTES = """
"align" is the smallest p_align of the library's PT_LOAD segments (prunedroid/android/elf.py, checked against readelf in
the tests); 16 KB pages need at least 0x4000. Sizes are the uncompressed .so: native libraries are stored
uncompressed in the APK (mmapped in place; `build-apk` stores them at 16 KB boundaries), so that is what each ABI
adds; an APK carries its flavor's abiFilters (app/build.gradle) or `build-apk --abi`'s.
"""


if __name__ == "__main__":
    main()
