"""The demo app's APK size per runtime, precision, ABI set and model, built by `invoke build-apk --builder direct`'s
code (prunedroid.android.build.build_apk) in a copy of android_app/: what a user weighs when choosing a runtime and the
ABIs to ship. Each APK's bytes are split into native libraries, dex and the model as stored in the zip.

    python benchmarks/apk_size.py --out benchmarks/results/apk_size

The models are VGG16-BN at --widths, exported from freshly initialised weights: a file's size depends on the
architecture's parameter count only, not on training, so trained models of the same widths give the same sizes.
Their sidecars (and the app's sample images) come from the real CIFAR-10 test set in --data-dir.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from prunedroid import data as cifar
from prunedroid.android import build as android
from prunedroid.android.elf import native_libraries
from prunedroid.deploy.export import export_checkpoint
from prunedroid.errors import PrunedroidError
from prunedroid.measure.report import markdown_table, write_results
from prunedroid.models import build_model, vgg16_spec
from prunedroid.training.checkpoint import Checkpoint

ABI_SETS = ("arm64-v8a", "arm64-v8a,x86_64", "arm64-v8a,armeabi-v7a,x86,x86_64")
MB = 1e6


def export_width(width: float, data: cifar.Cifar10, folder: Path) -> Path:
    """fp32 and int8 files (calibrated on 512 held-out training images; any top-1 accepted, the weights being
    untrained) of VGG16-BN at `width`: the sidecar."""
    model = build_model(vgg16_spec(width))
    checkpoint = folder / f"vgg16-w{width}.pt"
    Checkpoint(arch=model.spec.to_dict(), state_dict=model.state_dict(),
               metrics={"test": {"top1": 0.0, "images": 0}}).save(checkpoint)
    return export_checkpoint(checkpoint, data.test, folder / "export", f"vgg16-w{width}",
                             calibration=data.holdout.head(512), max_drop=100.0).sidecar


def split_bytes(apk: Path) -> dict[str, float]:
    """MB in the zip (compressed size) of native libraries, dex files, the model and the rest."""
    parts = {"native_mb": 0.0, "dex_mb": 0.0, "model_mb": 0.0, "other_mb": 0.0}
    with zipfile.ZipFile(apk) as zipped:
        for info in zipped.infolist():
            part = ("native_mb" if info.filename.startswith("lib/") else "dex_mb" if info.filename.endswith(".dex")
                    else "model_mb" if info.filename.startswith("assets/model.p") else "other_mb")
            parts[part] += info.compress_size / MB
    return {name: round(value, 2) for name, value in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/apk_size")
    parser.add_argument("--data-dir", default="data/cifar-10-batches-py")
    parser.add_argument("--widths", default="1.0,0.5")
    args = parser.parse_args()
    data = cifar.load_cifar10(args.data_dir, holdout=5000)
    test = data.test
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        app = Path(shutil.copytree(android.APP_DIR, work / "android_app",
                                   ignore=shutil.ignore_patterns("assets", "build", ".gradle")))
        env = {**os.environ, "ANDROID_USER_HOME": str(work / "android-home")}
        for width in map(float, args.widths.split(",")):
            sidecar = export_width(width, data, work / f"w{width}")
            for runtime, precision in (("lite", "fp32"), ("lite", "int8"), ("executorch", "fp32")):
                for abis in ABI_SETS:
                    row = {"runtime": runtime, "precision": precision, "abis": abis, "vgg16_width": width}
                    request = android.ApkRequest(runtime=runtime, precision=precision, builder="direct",
                                                 abis=tuple(abis.split(",")))
                    try:
                        apk = android.build_apk(sidecar, lambda: test, request, app, env)
                    except PrunedroidError as err:
                        rows.append({**row, "abis": "any", "apk_mb": None, "not_built": str(err).split(" - ")[0]})
                        break  # the same reason for every ABI set
                    libraries = native_libraries(apk)
                    rows.append({**row, "apk_mb": round(apk.stat().st_size / MB, 2), **split_bytes(apk),
                                 "elf_16k_ready": all(library.page_16k_ready for library in libraries)})
    table_rows = [{"runtime": r["runtime"], "precision": r["precision"], "ABIs": r["abis"],
                   "VGG16-BN width": r["vgg16_width"],
                   **({"APK MB": r["apk_mb"], "native MB": r["native_mb"], "dex MB": r["dex_mb"],
                       "model MB": r["model_mb"], "ELF 16 KB-ready": "yes" if r["elf_16k_ready"] else "no"}
                      if r["apk_mb"] is not None else
                      {"APK MB": "not built", "native MB": r["not_built"], "dex MB": "", "model MB": "",
                       "ELF 16 KB-ready": ""})} for r in rows]
    notes = ("Sizes are the APK file and each part's compressed size inside it (native libraries and the model are "
             "stored uncompressed; the rest is resources, labels and 20 sample images). ExecuTorch's int8 rows are "
             "absent while its flavor cannot be built.")
    write_results(args.out, {"rows": rows, "abi_sets": list(ABI_SETS)}, title="APK size by runtime, ABIs and model",
                  table=markdown_table(table_rows, list(table_rows[0])), notes=notes)
    print(markdown_table(table_rows, list(table_rows[0])))


if __name__ == "__main__":
    main()
