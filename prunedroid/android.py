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

from prunedroid import data as cifar
from prunedroid.errors import PrunedroidError
from prunedroid.probe import probe
from prunedroid.sidecar import Sidecar

APP_DIR = Path(__file__).resolve().parent.parent / "android_app"
PACKAGE = "org.prunedroid.demo"
MIN_JDK = 17  # the Android Gradle Plugin 8.x runs on JDK 17 or newer
# TorchScript bytecode versions each pytorch_android_lite release reads. 1.13.1 is PyTorch 1.13's mobile runtime,
# which writes v8 itself; prunedroid/deploy.py targets v8.
READABLE_BYTECODE = {"1.13.1": range(4, 9)}
ASSETS = ("model.json", "labels.txt", "samples")  # beside the model file itself, model.pte or model.ptl
RUNTIMES = ("executorch", "lite")  # the .pte on ExecuTorch (what a new app should ship) or the .ptl on PyTorch Mobile
PRECISIONS = ("fp32", "int8")


def assets_dir(app_dir: Path) -> Path:
    return app_dir / "app" / "src" / "main" / "assets"


def pinned_version(name: str, app_dir: Path = APP_DIR) -> str:
    """A runtime version app/build.gradle pins: its `def <name> = '...'` (pytorchLiteVersion, executorchVersion)."""
    found = re.search(rf"def {name} = '([^']+)'", (app_dir / "app" / "build.gradle").read_text())
    if not found:
        raise PrunedroidError(f"{app_dir}/app/build.gradle does not pin {name}")
    return found.group(1)


def runtime_version(app_dir: Path = APP_DIR) -> str:
    """The pytorch_android_lite version the app pins."""
    return pinned_version("pytorchLiteVersion", app_dir)


def _minor(version: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


@dataclass(frozen=True)
class AppModel:
    """The file the app runs: `source` on disk, staged as assets/`asset`, on `runtime` at `precision`."""

    source: Path
    asset: str
    runtime: str
    precision: str
    sha256: str


def app_model(sidecar: Sidecar, runtime: str, precision: str) -> AppModel:
    """The exported file the sidecar names for `runtime` and `precision`, checked against the sidecar (beside it,
    its size, format and hash: Sidecar.model_file), or an error saying how to get it."""
    if runtime not in RUNTIMES or precision not in PRECISIONS:
        raise PrunedroidError(f"--runtime must be one of {', '.join(RUNTIMES)} and --precision one of "
                              f"{', '.join(PRECISIONS)}, got {runtime!r} and {precision!r}")
    if runtime == "lite" and precision != "fp32":
        raise PrunedroidError("int8 models run on ExecuTorch only: use --runtime executorch --precision int8")
    kind, int8 = ("ptl", False) if runtime == "lite" else ("pte", precision == "int8")
    source = sidecar.model_file(kind, int8=int8)
    sha256 = (sidecar.int8 if int8 else sidecar.files)[kind].sha256
    return AppModel(source, f"model.{kind}", runtime, precision, sha256)


def check_model(sidecar_path: Path, runtime: str = "executorch", precision: str = "fp32",
                app_dir: Path = APP_DIR) -> tuple[Sidecar, AppModel]:
    """The sidecar and the file the app will run, once that file matches the sidecar and loads in the runtime the
    phone uses: a .ptl with a bytecode version the pinned pytorch_android_lite reads, in PyTorch's lite
    interpreter; a .pte written by an ExecuTorch no newer than the pinned executorch-android (ExecuTorch guarantees
    only that a runtime reads files from its own and earlier releases), in ExecuTorch's runtime. The file is first
    run in a child process (probe), so a crafted one cannot abort this one."""
    sidecar = Sidecar.read(sidecar_path)
    model = app_model(sidecar, runtime, precision)
    if runtime == "executorch":
        exporter, pinned = sidecar.executorch_version, pinned_version("executorchVersion", app_dir)
        if _minor(exporter) > _minor(pinned):
            raise PrunedroidError(f"{model.source} was written by ExecuTorch {exporter}, newer than the app's "
                                  f"executorch-android {pinned}, which is only guaranteed to read files from its own "
                                  f"and earlier releases; raise executorchVersion in app/build.gradle to "
                                  f"{exporter.split('+')[0]}")
    probe({model.source: list(sidecar.input_shape)})
    if runtime == "lite":
        version, pinned = torch.jit.mobile._get_model_bytecode_version(str(model.source)), runtime_version(app_dir)
        if version not in READABLE_BYTECODE.get(pinned, ()):
            readable = list(READABLE_BYTECODE.get(pinned, []))
            raise PrunedroidError(f"{model.source} has TorchScript bytecode v{version}, which pytorch_android_lite "
                                  f"{pinned} cannot read (it reads {readable}); export again")
    return sidecar, model


def png_bytes(image: np.ndarray) -> bytes:
    """A (H, W, 3) uint8 RGB image as a PNG file (no imaging library needed)."""
    height, width, _ = image.shape
    rows = b"".join(b"\x00" + row.tobytes() for row in np.ascontiguousarray(image, dtype=np.uint8))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def stage_assets(sidecar_path: Path, test: cifar.Split, runtime: str = "executorch", precision: str = "fp32",
                 app_dir: Path = APP_DIR, samples: int = 20) -> Path:
    """Fills the app's assets: the model (model.pte or model.ptl, see check_model), model.json (the sidecar, with
    "app_model" naming the staged file, its runtime, precision and hash), labels.txt (one class per line, in the
    model's output order) and samples/<index>_<class>.png (the first `samples` test images). Built beside the assets
    folder and swapped in whole, so a failure leaves the previous assets as they were."""
    sidecar, model = check_model(sidecar_path, runtime, precision, app_dir)
    target = assets_dir(app_dir)
    building = target.with_name("assets.staging")
    shutil.rmtree(building, ignore_errors=True)
    (building / "samples").mkdir(parents=True)
    try:
        shutil.copyfile(model.source, building / model.asset)
        staged = {"file": model.asset, "runtime": model.runtime, "precision": model.precision, "sha256": model.sha256}
        (building / "model.json").write_text(json.dumps({**sidecar.record, "app_model": staged}, indent=2) + "\n")
        (building / "labels.txt").write_text("\n".join(sidecar.classes) + "\n")
        for index in range(min(samples, len(test))):
            label = sidecar.classes[int(test.labels[index])]
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
        raise PrunedroidError("cannot build the APK; missing:\n  - " + "\n  - ".join(problems))
    return BuildTools(java=java, sdk=Path(sdk), gradle=gradle)


def apk_path(runtime: str = "executorch", variant: str = "debug", app_dir: Path = APP_DIR) -> Path:
    """Where Gradle writes the APK of `runtime`'s product flavor and `variant`."""
    return app_dir / "app" / "build" / "outputs" / "apk" / runtime / variant / f"app-{runtime}-{variant}.apk"


def build_apk(sidecar_path: Path, load_test: Callable[[], cifar.Split], variant: str = "debug",
              app_dir: Path = APP_DIR, env: Mapping[str, str] | None = None, runtime: str = "executorch",
              precision: str = "fp32") -> Path:
    """Checks the prerequisites, stages the assets and runs `gradle assemble<Runtime><Variant>` (the runtime's product
    flavor: one runtime per APK); returns the APK path.
    load_test gives the test images the sample pictures come from; it is called only once the prerequisites hold,
    so a missing model or SDK is reported before the test set is looked for (or downloaded)."""
    if variant not in ("debug", "release"):
        raise PrunedroidError(f"--variant must be debug or release, got {variant!r}")
    env = dict(os.environ if env is None else env)
    problems = []  # every missing piece at once, not one per try
    try:
        check_model(sidecar_path, runtime, precision, app_dir)
    except PrunedroidError as error:
        problems.append(str(error))
    try:
        tools = find_build_tools(app_dir, env)
    except PrunedroidError as error:
        problems.append(str(error))
    if problems:
        raise PrunedroidError("\n".join(problems))
    stage_assets(sidecar_path, load_test(), runtime, precision, app_dir)
    env["ANDROID_HOME"] = str(tools.sdk)
    if not env.get("JAVA_HOME"):
        env["JAVA_HOME"] = str(Path(tools.java).resolve().parent.parent)
    command = [*tools.gradle, f"assemble{runtime.capitalize()}{variant.capitalize()}"]
    result = subprocess.run(command, cwd=app_dir, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise PrunedroidError(f"`{' '.join(command)}` failed in {app_dir} (exit {result.returncode}):\n{tail}")
    apk = apk_path(runtime, variant, app_dir)
    if not apk.is_file():
        raise PrunedroidError(f"Gradle reported success but wrote no {apk}")
    return apk
