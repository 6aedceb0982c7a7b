"""The Python side of the Android app: check the build prerequisites, stage an exported model and its sidecar, the
labels and sample images into the app's assets, and build the APK: with Gradle, or without it (prunedroid.android.apk).

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
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.jit.mobile

from prunedroid import data as cifar
from prunedroid.android import elf
from prunedroid.android.apk import direct
from prunedroid.android.apk.direct import MIN_JDK, jdk_major
from prunedroid.android.apk.gradle_file import read_gradle_app
from prunedroid.deploy.probe import probe
from prunedroid.deploy.sidecar import Sidecar
from prunedroid.errors import PrunedroidError
from prunedroid.files import check_writable

APP_DIR = Path(__file__).resolve().parents[2] / "android_app"
PACKAGE = "org.prunedroid.demo"
# TorchScript bytecode versions each pytorch_android_lite release reads: kMinSupportedBytecodeVersion to
# kMaxSupportedBytecodeVersion in caffe2/serialize/versions.h at the release's PyTorch tag (v9 was added by
# pytorch/pytorch#75201 before the 1.12 branch), which the loader passes to its version check; in 1.12.2's
# libpytorch_jni_lite.so (x86_64) the two constants that check reads are 4 and 9 (docs/android.md, "Bytecode").
# prunedroid/deploy/formats.py writes v8.
READABLE_BYTECODE = {"1.12.2": range(4, 10)}
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
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None:
        raise PrunedroidError(f"{version!r} is not a version such as 1.5.1")
    return int(found.group(1)), int(found.group(2))


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
    kind, int8 = ("ptl" if runtime == "lite" else "pte"), precision == "int8"
    if int8 and sidecar.int8 and kind not in sidecar.int8:
        raise PrunedroidError(f"{sidecar.path} has no int8 .{kind} (exported before there was one); export again "
                              f"with --quantize int8")
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
        if exporter is not None and _minor(exporter) > _minor(pinned):
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


def find_build_tools(app_dir: Path = APP_DIR, env: Mapping[str, str] | None = None) -> BuildTools:
    """JDK 17+, an Android SDK and Gradle, or one error listing each that is missing and how to get it."""
    env = os.environ if env is None else env
    path = env.get("PATH", "")
    problems = []
    java = (str(Path(env["JAVA_HOME"]) / "bin" / "java") if env.get("JAVA_HOME")
            else shutil.which("java", path=path))
    major = jdk_major(java) if java else None
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
    on_path = shutil.which("gradle", path=path)
    gradle = [str(wrapper)] if wrapper.is_file() else [on_path] if on_path else []
    if not gradle:
        problems.append(f"Gradle: install Gradle 8.10 or newer and either put `gradle` on PATH or run `gradle wrapper` "
                        f"once in {app_dir} (Android Studio also creates the wrapper when it opens the project)")
    if problems or java is None or sdk is None:  # each missing one has its problem listed
        raise PrunedroidError("cannot build the APK; missing:\n  - " + "\n  - ".join(problems))
    return BuildTools(java=java, sdk=Path(sdk), gradle=gradle)


def apk_path(runtime: str = "executorch", variant: str = "debug", app_dir: Path = APP_DIR) -> Path:
    """Where Gradle writes the APK of `runtime`'s product flavor and `variant`."""
    return app_dir / "app" / "build" / "outputs" / "apk" / runtime / variant / f"app-{runtime}-{variant}.apk"


BUILDERS = ("auto", "gradle", "direct")
ABIS = ("arm64-v8a", "armeabi-v7a", "x86", "x86_64")  # Android's ABIs (a runtime's AAR ships some of them)
KEYSTORE_PASSWORD_ENV = "PRUNEDROID_KEYSTORE_PASSWORD"  # a release keystore's password: never on a command line


@dataclass(frozen=True)
class ApkRequest:
    """What `invoke build-apk` asks for beside the model: how to build (auto: Gradle when it and an SDK are there,
    else direct), the ABIs packaged (None: the flavor's abiFilters), and a release keystore (None: the debug key)."""

    variant: str = "debug"
    runtime: str = "executorch"
    precision: str = "fp32"
    builder: str = "auto"
    abis: tuple[str, ...] | None = None
    keystore: Path | None = None
    key_alias: str | None = None


def _check_request(request: ApkRequest, env: Mapping[str, str]) -> None:
    if request.variant not in ("debug", "release"):
        raise PrunedroidError(f"--variant must be debug or release, got {request.variant!r}")
    if request.builder not in BUILDERS:
        raise PrunedroidError(f"--builder must be one of {', '.join(BUILDERS)}, got {request.builder!r}")
    if request.abis is not None and (not request.abis or len(set(request.abis)) != len(request.abis)
                                     or not set(request.abis) <= set(ABIS)):
        raise PrunedroidError(f"--abi takes comma-separated ABIs among {', '.join(ABIS)}, each once; got "
                              f"{','.join(request.abis)!r}")
    if (request.keystore is None) != (request.key_alias is None):
        raise PrunedroidError("--keystore and --key-alias go together: give both to sign with your key, or neither "
                              "for the debug key")
    if request.keystore is not None:
        if request.variant != "release":
            raise PrunedroidError("--keystore signs a release build: add --variant release (debug builds use the "
                                  "debug key, which bench-device's run-as needs)")
        if not request.keystore.is_file():
            raise PrunedroidError(f"--keystore {request.keystore} is not a file; give the keystore (.jks or .p12) "
                                  f"that holds your signing key")
        if not env.get(KEYSTORE_PASSWORD_ENV):
            raise PrunedroidError(f"--keystore needs its password in the environment variable {KEYSTORE_PASSWORD_ENV}"
                                  f" (never on the command line): export it and build again")


def _gradle_or_direct(request: ApkRequest, app_dir: Path, env: Mapping[str, str]) -> BuildTools | direct.Tools:
    """The tools of the builder asked for; with auto, Gradle's when they are all there, else the direct build's."""
    if request.builder != "direct":
        try:
            tools = find_build_tools(app_dir, env)
        except PrunedroidError:
            if request.builder == "gradle":
                raise
        else:
            if request.abis is not None or request.keystore is not None:
                raise PrunedroidError("--abi and --keystore apply to the build without Gradle (add --builder direct); "
                                      "with Gradle, set abiFilters and a signingConfig in app/build.gradle")
            return tools
    return direct.find_tools(read_gradle_app(app_dir), env)


def build_apk(sidecar_path: Path, load_test: Callable[[], cifar.Split], request: ApkRequest = ApkRequest(),
              app_dir: Path = APP_DIR, env: Mapping[str, str] | None = None) -> Path:
    """Checks the prerequisites, stages the assets and builds the runtime's flavor (one runtime per APK): with
    Gradle (`gradle assemble<Runtime><Variant>`) or without it (prunedroid.android.apk.direct); returns the APK path,
    where Gradle writes it (apk_path) either way.
    load_test gives the test images the sample pictures come from; it is called only once the prerequisites hold,
    so a missing model or tool is reported before the test set is looked for (or downloaded)."""
    env = dict(os.environ if env is None else env)
    _check_request(request, env)
    problems = []  # every missing piece at once, not one per try
    try:
        check_model(sidecar_path, request.runtime, request.precision, app_dir)
    except PrunedroidError as error:
        problems.append(str(error))
    try:
        tools = _gradle_or_direct(request, app_dir, env)
    except PrunedroidError as error:
        problems.append(str(error))
    if problems:
        raise PrunedroidError("\n".join(problems))
    apk = apk_path(request.runtime, request.variant, app_dir)
    try:
        check_writable(apk.parent)
    except OSError as err:
        raise PrunedroidError(f"cannot write the APK into {apk.parent}: {err.strerror}; make the app's build folder "
                              f"writable") from None
    if isinstance(tools, direct.Tools):
        return _build_direct(sidecar_path, load_test, request, app_dir, env, tools, apk)
    stage_assets(sidecar_path, load_test(), request.runtime, request.precision, app_dir)
    env["ANDROID_HOME"] = str(tools.sdk)
    if not env.get("JAVA_HOME"):
        env["JAVA_HOME"] = str(Path(tools.java).resolve().parent.parent)
    command = [*tools.gradle, f"assemble{request.runtime.capitalize()}{request.variant.capitalize()}"]
    result = subprocess.run(command, cwd=app_dir, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise PrunedroidError(f"`{' '.join(command)}` failed in {app_dir} (exit {result.returncode}):\n{tail}")
    if not apk.is_file():
        raise PrunedroidError(f"Gradle reported success but wrote no {apk}")
    return apk


def _build_direct(sidecar_path: Path, load_test: Callable[[], cifar.Split], request: ApkRequest, app_dir: Path,
                  env: Mapping[str, str], tools: direct.Tools, apk: Path) -> Path:
    app = read_gradle_app(app_dir)
    abis = request.abis or app.abis[request.runtime]
    signing = (direct.Signing(request.keystore, request.key_alias, KEYSTORE_PASSWORD_ENV)
               if request.keystore is not None and request.key_alias is not None else direct.debug_signing(tools, env))
    staged = stage_assets(sidecar_path, load_test(), request.runtime, request.precision, app_dir)
    model = app_model(Sidecar.read(sidecar_path), request.runtime, request.precision)

    def check_runtime(aar: Path) -> None:
        if request.runtime == "lite":
            missing = missing_operators(staged / model.asset, aar)
            if missing:
                raise PrunedroidError(f"{model.source} calls {', '.join(missing)}, which {aar.name}'s interpreter does "
                                      f"not register: it would fail to load on the phone; export a model without them")

    return direct.build(direct.Request(app_dir, app, request.runtime, request.variant == "debug", tuple(abis),
                                       assets_dir(app_dir), apk), tools, signing, check_runtime)


LITE_LIBRARY = re.compile(r"^jni/[\w-]+/libpytorch_jni_lite\.so$")


def missing_operators(ptl: Path, aar: Path) -> list[str]:
    """The operators a .ptl calls (torch's own list of them) whose schema ("name.overload(" as registered) appears
    in no ABI's libpytorch_jni_lite.so of the lite AAR: operators that runtime does not have. The file was loaded
    in a child process first (check_model), so loading it here cannot take this process down."""
    operators = torch.jit.mobile._export_operator_list(torch.jit.mobile._load_for_lite_interpreter(str(ptl)))
    with zipfile.ZipFile(aar) as zipped:
        library = next((zipped.read(name) for name in zipped.namelist() if LITE_LIBRARY.match(name)), b"")
    return sorted(op for op in operators if f"{op.split('::', 1)[-1]}(".encode() not in library)


def page_size_warning(apk: Path) -> str | None:
    """One line when the APK packages native libraries whose loadable segments are not 16 KB-aligned: such an app
    does not load them on a phone with 16 KB pages, and Google Play requires 16 KB support of apps targeting Android
    15+."""
    unready = [library for library in elf.native_libraries(apk) if not library.page_16k_ready]
    if not unready:
        return None
    alignment = min(library.load_alignment for library in unready)
    names = [f"lib/{library.abi}/{library.name}" for library in unready]
    return (f"warning: {len(unready)} native libraries in {apk.name} are {alignment // 1024} KB-aligned ELF, not 16 KB "
            f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): they will not load on phones with "
            f"16 KB pages, and Google Play requires 16 KB support for apps targeting Android 15+")
