"""The Python side of the Android app: check the build prerequisites, stage an exported model and its sidecar, the
labels and sample images into the app's assets, and run Gradle.

Everything the app needs to preprocess like training - input shape, mean, std, class names - comes from the export's
sidecar; the app reads it as an asset and never retypes it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.jit.mobile

from pipeline import data as cifar
from pipeline.checkpoint import file_sha256
from pipeline.errors import PipelineError
from pipeline.export import read_sidecar

APP_DIR = Path(__file__).resolve().parent.parent / "android_app"
PACKAGE = "org.prunedroid.demo"
MIN_JDK = 17  # the Android Gradle Plugin 8.x runs on JDK 17 or newer
# TorchScript bytecode versions each pytorch_android_lite release reads. 1.13.1 is PyTorch 1.13's mobile runtime,
# which writes v8 itself; pipeline/export.py targets v8.
READABLE_BYTECODE = {"1.13.1": range(4, 9)}
ASSETS = ("model.ptl", "model.json", "labels.txt", "samples")


def assets_dir(app_dir: Path) -> Path:
    return app_dir / "app" / "src" / "main" / "assets"


def runtime_version(app_dir: Path = APP_DIR) -> str:
    """The pytorch_android_lite version app/build.gradle pins (its `def pytorchLiteVersion = '...'`)."""
    found = re.search(r"def pytorchLiteVersion = '([^']+)'", (app_dir / "app" / "build.gradle").read_text())
    if not found:
        raise PipelineError(f"{app_dir}/app/build.gradle does not pin pytorchLiteVersion")
    return found.group(1)


def check_model(sidecar_path: Path, app_dir: Path = APP_DIR) -> dict:
    """The sidecar, once its .ptl exists, matches its hash, has a bytecode version the app's runtime reads and loads
    in PyTorch's lite interpreter (the loader PyTorch Mobile uses)."""
    sidecar = read_sidecar(sidecar_path)
    ptl = sidecar_path.parent / sidecar["ptl"]
    if not ptl.is_file() or file_sha256(ptl) != sidecar["ptl_sha256"]:
        raise PipelineError(f"{ptl} is missing or is not the file {sidecar_path.name} describes; export again")
    version, runtime = torch.jit.mobile._get_model_bytecode_version(str(ptl)), runtime_version(app_dir)
    if version not in READABLE_BYTECODE.get(runtime, ()):
        raise PipelineError(f"{ptl} has TorchScript bytecode v{version}, which pytorch_android_lite {runtime} "
                            f"cannot read (it reads {list(READABLE_BYTECODE.get(runtime, []))}); export again")
    torch.jit.mobile._load_for_lite_interpreter(str(ptl))
    return sidecar


def png_bytes(image: np.ndarray) -> bytes:
    """A (H, W, 3) uint8 RGB image as a PNG file (no imaging library needed)."""
    height, width, _ = image.shape
    rows = b"".join(b"\x00" + row.tobytes() for row in np.ascontiguousarray(image, dtype=np.uint8))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def stage_assets(sidecar_path: Path, test: cifar.Split, app_dir: Path = APP_DIR, samples: int = 20) -> Path:
    """Fills the app's assets: model.ptl, model.json (the sidecar), labels.txt (one class per line, in the model's
    output order) and samples/<index>_<class>.png (the first `samples` test images). Built beside the assets folder
    and swapped in whole, so a failure leaves the previous assets as they were."""
    sidecar = check_model(sidecar_path, app_dir)
    target = assets_dir(app_dir)
    building = target.with_name("assets.staging")
    shutil.rmtree(building, ignore_errors=True)
    (building / "samples").mkdir(parents=True)
    try:
        shutil.copyfile(sidecar_path.parent / sidecar["ptl"], building / "model.ptl")
        (building / "model.json").write_text(json.dumps({**sidecar, "ptl": "model.ptl"}, indent=2) + "\n")
        (building / "labels.txt").write_text("\n".join(sidecar["classes"]) + "\n")
        for index in range(min(samples, len(test))):
            label = sidecar["classes"][int(test.labels[index])]
            image = test.images[index].permute(1, 2, 0).numpy()
            (building / "samples" / f"{index:03d}_{label}.png").write_bytes(png_bytes(image))
        shutil.rmtree(target, ignore_errors=True)
        building.rename(target)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


@dataclass(frozen=True)
class BuildTools:
    java: str
    sdk: Path
    gradle: list[str]


def _jdk_major(java: str) -> int | None:
    """`java -version` prints e.g. 'openjdk version "17.0.15" 2025-04-15' (or "1.8.0_392" for 8) on stderr."""
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=False)
    except OSError:
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if not found:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def find_build_tools(app_dir: Path = APP_DIR, env: Mapping[str, str] | None = None) -> BuildTools:
    """JDK 17+, an Android SDK and Gradle, or one error listing each that is missing and how to get it."""
    env = os.environ if env is None else env
    path = env.get("PATH", "")
    problems = []
    java = (str(Path(env["JAVA_HOME"]) / "bin" / "java") if env.get("JAVA_HOME")
            else shutil.which("java", path=path))
    major = _jdk_major(java) if java else None
    if major is None or major < MIN_JDK:
        problems.append(f"JDK {MIN_JDK} or newer (found: {f'JDK {major}' if major else 'none'}): install one, e.g. "
                        f"`sudo apt install openjdk-17-jdk` or Android Studio's bundled JBR, and set JAVA_HOME")
    sdk = env.get("ANDROID_HOME") or env.get("ANDROID_SDK_ROOT")
    properties = app_dir / "local.properties"
    if not sdk and properties.is_file():
        found = re.search(r"^sdk\.dir=(.+)$", properties.read_text(), re.MULTILINE)
        sdk = found.group(1).strip() if found else None
    if not sdk or not Path(sdk).is_dir():
        problems.append(f"the Android SDK (found: {sdk or 'none'}): install Android Studio or the command-line "
                        f"tools (https://developer.android.com/studio#command-tools), then set ANDROID_HOME or write "
                        f"sdk.dir=<path> into {properties}")
    wrapper = app_dir / "gradlew"
    gradle = [str(wrapper)] if wrapper.is_file() else [found] if (found := shutil.which("gradle", path=path)) else []
    if not gradle:
        problems.append(f"Gradle: install Gradle 8.10 or newer and either put `gradle` on PATH or run `gradle wrapper` "
                        f"once in {app_dir} (Android Studio also creates the wrapper when it opens the project)")
    if problems:
        raise PipelineError("cannot build the APK; missing:\n  - " + "\n  - ".join(problems))
    return BuildTools(java=java, sdk=Path(sdk), gradle=gradle)


def build_apk(sidecar_path: Path, load_test: Callable[[], cifar.Split], variant: str = "debug",
              app_dir: Path = APP_DIR, env: Mapping[str, str] | None = None) -> Path:
    """Checks the prerequisites, stages the assets and runs `gradle assemble<Variant>`; returns the APK path.
    load_test gives the test images the sample pictures come from; it is called only once the prerequisites hold,
    so a missing model or SDK is reported before the test set is looked for (or downloaded)."""
    if variant not in ("debug", "release"):
        raise PipelineError(f"--variant must be debug or release, got {variant!r}")
    env = dict(os.environ if env is None else env)
    problems = []  # every missing piece at once, not one per try
    try:
        check_model(sidecar_path, app_dir)
    except PipelineError as error:
        problems.append(str(error))
    try:
        tools = find_build_tools(app_dir, env)
    except PipelineError as error:
        problems.append(str(error))
    if problems:
        raise PipelineError("\n".join(problems))
    stage_assets(sidecar_path, load_test(), app_dir)
    env["ANDROID_HOME"] = str(tools.sdk)
    if not env.get("JAVA_HOME"):
        env["JAVA_HOME"] = str(Path(tools.java).resolve().parent.parent)
    command = [*tools.gradle, f"assemble{variant.capitalize()}"]
    result = subprocess.run(command, cwd=app_dir, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise PipelineError(f"`{' '.join(command)}` failed in {app_dir} (exit {result.returncode}):\n{tail}")
    apk = app_dir / "app" / "build" / "outputs" / "apk" / variant / f"app-{variant}.apk"
    if not apk.is_file():
        raise PipelineError(f"Gradle reported success but wrote no {apk}")
    return apk
