"""Each runtime's native libraries as the app would package them: per ABI, every .so in the runtime's published AAR
(fetched by Maven from Maven Central), its size and its ELF load alignment - 16 KB-page phones need every PT_LOAD
segment aligned to at least 0x4000 (Google Play requires it of apps targeting Android 15+).

    python benchmarks/native_libraries.py --out benchmarks/results/native_libraries

Each runtime is tried at the version app/build.gradle pins; where this machine's Maven Central mirror does not serve
it, at each of --also's versions in turn, and the table says which version was read.
"""
from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from prunedroid import android
from prunedroid.elf import PAGE_16K, native_libraries
from prunedroid.report import markdown_table, write_results

COORDINATES = {"executorch": ("org.pytorch:executorch-android", "executorchVersion"),
               "lite": ("org.pytorch:pytorch_android_lite", "pytorchLiteVersion")}


def fetch_aar(coordinate: str, folder: Path) -> Path | None:
    """The AAR of `coordinate` ("group:artifact:version") copied into `folder`, or None where Maven Central does not
    serve it."""
    result = subprocess.run(["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={coordinate}:aar",
                             f"-DoutputDirectory={folder}"], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        if "Could not find artifact" in result.stdout + result.stderr or "not found" in result.stdout:
            return None
        raise RuntimeError(f"mvn failed for {coordinate}: {(result.stdout + result.stderr)[-2000:]}")
    return next(folder.glob("*.aar"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/native_libraries")
    parser.add_argument("--also", default="lite=1.12.2", help="runtime=version,... tried where the pin is not served")
    args = parser.parse_args()
    also: dict[str, list[str]] = {}
    for item in filter(None, args.also.split(",")):
        runtime, version = item.split("=")
        also.setdefault(runtime, []).append(version)
    runtimes, rows = {}, []
    for runtime, (artifact, variable) in COORDINATES.items():
        pinned = android.pinned_version(variable)
        tried = {}
        for version in [pinned, *also.get(runtime, [])]:
            with tempfile.TemporaryDirectory() as scratch:
                aar = fetch_aar(f"{artifact}:{version}", Path(scratch))
                tried[version] = aar is not None
                if aar is None:
                    continue
                libraries = native_libraries(aar)
                aar_bytes = aar.stat().st_size
            runtimes[runtime] = {"artifact": artifact, "pinned": pinned, "read": version, "tried": tried,
                                 "aar_bytes": aar_bytes,
                                 "libraries": [{"abi": lib.abi, "name": lib.name, "bytes": lib.bytes,
                                                "load_alignment": lib.load_alignment,
                                                "page_16k_ready": lib.page_16k_ready} for lib in libraries]}
            for abi in sorted({lib.abi for lib in libraries}):
                of_abi = [lib for lib in libraries if lib.abi == abi]
                rows.append({"runtime": runtime, "version read (pinned)": f"{version} ({pinned})", "ABI": abi,
                             "libraries": ", ".join(f"{lib.name} {lib.bytes / 1e6:.1f} MB, align "
                                                    f"{lib.load_alignment:#x}" for lib in of_abi),
                             "MB in the APK (uncompressed)": f"{sum(lib.bytes for lib in of_abi) / 1e6:.1f}",
                             "16 KB pages": "ready" if all(lib.page_16k_ready for lib in of_abi) else "NOT ready"})
            break
        else:
            runtimes[runtime] = {"artifact": artifact, "pinned": pinned, "read": None, "tried": tried}
            rows.append({"runtime": runtime, "version read (pinned)": f"none ({pinned})", "ABI": "-",
                         "libraries": f"not served here at {', '.join(tried)}",
                         "MB in the APK (uncompressed)": "-", "16 KB pages": "unknown"})
    write_results(args.out, {"page_16k": PAGE_16K, "runtimes": runtimes},
                  "Native libraries of each runtime's AAR: size and 16 KB page alignment",
                  markdown_table(rows, list(rows[0])), notes=NOTES)


NOTES = """
"align" is the smallest p_align of the library's PT_LOAD segments (prunedroid/elf.py, checked against readelf in
the tests); 16 KB pages need at least 0x4000. Sizes are the uncompressed .so: the Android Gradle Plugin stores native
libraries uncompressed (page-aligned, mmapped in place) when minSdk >= 23, so that is what each ABI adds to the APK;
an APK carries the ABIs of its flavor's abiFilters (app/build.gradle).
"""


if __name__ == "__main__":
    main()
