"""`invoke build-apk --builder direct`: a real APK built without Gradle, checked by the platform's own tools
(apksigner, aapt, dexdump) and by reading its zip; and each way the build can fail - a missing tool, a runtime library
no repository serves, a damaged library in Maven's cache, an unwritable output, a hostile sidecar - as one line that
leaves no APK behind."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

import prunedroid.android.build as android
from prunedroid.android.apk import archive, direct
from prunedroid.android.apk.gradle_file import read_gradle_app
from prunedroid.deploy.export import export_checkpoint
from prunedroid.deploy.sidecar import Sidecar
from prunedroid.errors import PrunedroidError
from prunedroid.models import vgg16_spec
from prunedroid.training.checkpoint import Checkpoint
from tests.conftest import ROOT, project_env, run_invoke_each
from tests.test_prune import trained_like

TOOLS = ("java", "javac", "keytool", "mvn", "aapt2", "apksigner", "aapt", "dexdump")
needs_tools = pytest.mark.skipif(
    any(shutil.which(name) is None for name in TOOLS) or not direct.DEBIAN_FRAMEWORK.is_file(),
    reason="needs a JDK, Maven and the SDK's tools (Debian: apt-get install openjdk-17-jdk-headless maven aapt "
           "apksigner dexdump android-framework-res; .ci/run installs them)")
APP_CLASSES = ("MainActivity", "BenchmarkActivity", "Classifier", "FlavorRunner", "BuildConfig", "R")


def project_copy(folder: Path) -> Path:
    """tasks.py, the package and the app's sources copied: `invoke` run there builds into the copy's android_app/,
    never the checkout's."""
    for name in ("tasks.py", "pyproject.toml"):
        shutil.copy(ROOT / name, folder / name)
    ignore = shutil.ignore_patterns("__pycache__", "build", "assets", ".gradle")
    shutil.copytree(ROOT / "prunedroid", folder / "prunedroid", ignore=ignore)
    shutil.copytree(ROOT / "android_app", folder / "android_app", ignore=ignore)
    return folder


def invoke_in(copy: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(copy), *args], cwd=copy,
                          capture_output=True, text=True, timeout=1200, check=False,
                          env={**project_env(), **env, "PYTHONPATH": str(copy)})


def files_below(folder: Path) -> set[Path]:
    return {path.relative_to(folder) for path in folder.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, synthetic_data) -> Path:
    """A small VGG16-BN exported with its int8 files (calibrated on held-out images; any accuracy accepted, as the
    weights are untrained): the sidecar."""
    folder = tmp_path_factory.mktemp("export")
    model = trained_like(vgg16_spec(0.0625))
    Checkpoint(arch=model.spec.to_dict(), state_dict=model.state_dict()).save(folder / "m.pt")
    return export_checkpoint(folder / "m.pt", synthetic_data.test.head(1000), folder / "out", "pruned",
                             calibration=synthetic_data.holdout.head(32), max_drop=100.0).sidecar


@pytest.fixture(scope="module")
def built(tmp_path_factory, exported, cifar_dir):
    """The lite flavor's debug APK, built by `invoke build-apk --builder direct --runtime lite` in a copy of the
    project, with the debug key made in a fresh ANDROID_USER_HOME. Returns (apk, what the command printed, the
    copy, the user home, the copy's files before the build)."""
    copy = project_copy(tmp_path_factory.mktemp("project"))
    home = tmp_path_factory.mktemp("android-user-home")
    before = files_below(copy)
    result = invoke_in(copy, "build-apk", "--model", str(exported), "--runtime", "lite", "--builder", "direct",
                       "--data-dir", str(cifar_dir), env={"ANDROID_USER_HOME": str(home)})
    assert result.returncode == 0, result.stderr[-3000:]
    return android.apk_path("lite", "debug", copy / "android_app"), result.stdout, copy, home, before


def real_tool(*args: str) -> str:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, (args, result.stderr[-2000:])
    return result.stdout


def local_data_offsets(apk: Path) -> dict[str, tuple[int, int]]:
    """(compression method, offset of the data) of each entry, from the local headers themselves, read here without
    the product's reader: walk the central directory, then each local header's fixed 30 bytes."""
    found = {}
    with zipfile.ZipFile(apk) as zipped, apk.open("rb") as raw:
        for info in zipped.infolist():
            raw.seek(info.header_offset)
            header = raw.read(30)
            assert header[:4] == b"PK\x03\x04"
            method, = struct.unpack_from("<H", header, 8)
            name_length, extra_length = struct.unpack_from("<HH", header, 26)
            found[info.filename] = (method, info.header_offset + 30 + name_length + extra_length)
    return found


@needs_tools
def test_the_apk_passes_the_platforms_own_checks(built, exported):
    apk, printed, _, _, _ = built
    assert f"{apk} (" in printed and "MB); install: adb install -r" in printed
    verified = real_tool("apksigner", "verify", "--verbose", str(apk))
    assert re.search(r"Verified using v[23] scheme \(APK Signature Scheme v[23]\): true", verified)
    badging = real_tool("aapt", "dump", "badging", str(apk))
    app = read_gradle_app(android.APP_DIR)
    assert f"package: name='{app.application_id}' versionCode='{app.version_code}'" in badging
    assert f"sdkVersion:'{app.min_sdk}'" in badging and f"targetSdkVersion:'{app.target_sdk}'" in badging
    assert f"compileSdkVersion='{app.compile_sdk}'" in badging and "application-debuggable" in badging
    assert f"launchable-activity: name='{app.application_id}.MainActivity'" in badging
    assert "native-code: 'arm64-v8a' 'x86_64'" in badging  # the flavor's abiFilters, nothing else
    classes = set(re.findall(r"Class descriptor  : 'L([^;]+);'", real_tool("dexdump", str(apk))))
    package = app.application_id.replace(".", "/")
    assert {f"{package}/{name}" for name in APP_CLASSES} <= classes
    assert {"org/pytorch/LiteModuleLoader", "org/pytorch/Tensor", "com/facebook/jni/HybridData",
            "com/facebook/soloader/nativeloader/NativeLoader"} <= classes
    # BuildConfig says the runtime actually packaged: the pin, which is the version Maven served.
    build_config = real_tool("dexdump", "-f", str(apk))
    assert f'"{android.runtime_version()}"' in build_config.split("PYTORCH_LITE_VERSION", 1)[1][:200]


@needs_tools
def test_native_libraries_are_stored_at_16_kb_and_the_model_is_the_exported_file(built, exported):
    apk, printed, _, _, _ = built
    offsets = local_data_offsets(apk)
    libraries = {name: where for name, where in offsets.items() if name.startswith("lib/")}
    assert {name.split("/")[1] for name in libraries} == {"arm64-v8a", "x86_64"}
    assert all(name.endswith(".so") and method == 0 and offset % 16384 == 0
               for name, (method, offset) in libraries.items()), libraries
    assert offsets["resources.arsc"][0] == 0 and offsets["resources.arsc"][1] % 4 == 0
    assert offsets["assets/model.ptl"][0] == 0  # stored: the app copies it out with a plain read
    sidecar = Sidecar.read(exported)
    with zipfile.ZipFile(apk) as zipped:
        model = zipped.read("assets/model.ptl")
        assert hashlib.sha256(model).hexdigest() == sidecar.files["ptl"].sha256
        assert model == (exported.parent / sidecar.files["ptl"].name).read_bytes()
        staged = json.loads(zipped.read("assets/model.json"))
        assert staged["app_model"] == {"file": "model.ptl", "runtime": "lite", "precision": "fp32",
                                       "sha256": sidecar.files["ptl"].sha256}
        assert zipped.read("assets/labels.txt").decode().splitlines() == list(sidecar.classes)
        samples = [name for name in zipped.namelist() if name.startswith("assets/samples/")]
        assert len(samples) == 20 and all(zipped.read(name)[:8] == b"\x89PNG\r\n\x1a\n" for name in samples)
    # pytorch_android_lite's libraries are 4 KB-aligned ELF: the build says so in one line.
    assert re.search(r"warning: 6 native libraries in app-lite-debug.apk are 4 KB-aligned ELF, not 16 KB", printed)


@needs_tools
def test_nothing_outside_the_build_folder_is_written_but_the_debug_key(built):
    apk, _, copy, home, before = built
    app = copy / "android_app" / "app"
    added = {path for path in files_below(copy) - before
             if not {app / "build", app / "src" / "main" / "assets"} & set((copy / path).parents)}
    assert added == set()
    assert files_below(home) == {Path("debug.keystore")}
    listed = real_tool("keytool", "-list", "-keystore", str(home / "debug.keystore"), "-storepass", "android")
    assert "androiddebugkey" in listed
    assert [path.name for path in apk.parent.iterdir()] == [apk.name]  # no partial APK beside it


@needs_tools
def test_the_int8_ptl_builds_too_as_a_release_signed_with_your_key(tmp_path, app_dir, exported, synthetic_data):
    """`invoke export --quantize int8` writes an int8 .ptl (QNNPACK's operators, which the pinned runtime's library
    registers); `build-apk --runtime lite --precision int8 --variant release --keystore K --key-alias A` stages it
    and signs with that key, its password read from the environment."""
    keystore = tmp_path / "release.p12"
    real_tool("keytool", "-genkeypair", "-keystore", str(keystore), "-storepass", "s3cret pass", "-alias", "upload",
              "-keyalg", "RSA", "-keysize", "2048", "-validity", "2", "-dname", "CN=Prunedroid Test Release")
    request = android.ApkRequest(variant="release", runtime="lite", precision="int8", builder="direct",
                                 keystore=keystore, key_alias="upload")
    env = {**os.environ, "ANDROID_USER_HOME": str(tmp_path / "android-home")}
    with pytest.raises(PrunedroidError, match="needs its password in the environment variable "
                                              "PRUNEDROID_KEYSTORE_PASSWORD"):
        android.build_apk(exported, lambda: synthetic_data.test, request, app_dir, env)
    env[android.KEYSTORE_PASSWORD_ENV] = "s3cret pass"
    apk = android.build_apk(exported, lambda: synthetic_data.test, request, app_dir, env)
    assert apk == android.apk_path("lite", "release", app_dir)
    verified = real_tool("apksigner", "verify", "--verbose", "--print-certs", str(apk))
    assert re.search(r"Verified using v[23] scheme \(APK Signature Scheme v[23]\): true", verified)
    assert "CN=Prunedroid Test Release" in verified
    assert "application-debuggable" not in real_tool("aapt", "dump", "badging", str(apk))
    assert not (tmp_path / "android-home").exists()  # a release signed with your key makes no debug key
    int8 = Sidecar.read(exported).int8["ptl"]
    with zipfile.ZipFile(apk) as zipped:
        assert hashlib.sha256(zipped.read("assets/model.ptl")).hexdigest() == int8.sha256
        staged = json.loads(zipped.read("assets/model.json"))["app_model"]
    assert (staged["precision"], staged["sha256"]) == ("int8", int8.sha256)


@pytest.fixture
def fake_m2(tmp_path) -> Path:
    """A Maven repository with the lite runtime's AAR (a small one: classes.jar and two ABIs' libraries) and its two
    jars, each with the .sha1 Maven records beside what it downloads."""
    repository = tmp_path / "m2"

    put_lite_aar(repository, b"\x7fELF")
    return repository


def put_lite_aar(repository: Path, library: bytes) -> Path:
    """The lite runtime's AAR in `repository` (classes.jar, and `library` as two ABIs' libpytorch_jni_lite.so), with
    its .sha1 as Maven writes it."""
    group, artifact, version = read_gradle_app(android.APP_DIR).runtime_library["lite"].split(":")
    path = repository / Path(*group.split(".")) / artifact / version / f"{artifact}-{version}.aar"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zipped:
        zipped.writestr("classes.jar", b"PK\x05\x06" + bytes(18))
        for abi in ("arm64-v8a", "x86_64"):
            zipped.writestr(f"jni/{abi}/libpytorch_jni_lite.so", library)
    path.with_name(path.name + ".sha1").write_text(hashlib.sha1(path.read_bytes()).hexdigest() + "\n")  # noqa: S324
    return path


def fake_maven_env(tmp_path: Path, repository: Path) -> dict[str, str]:
    """PATH with tests/fake_mvn.py as `mvn` before the real tools, and ANDROID_USER_HOME in tmp_path."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "mvn").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ROOT / "tests" / "fake_mvn.py"}" "$@"\n')
    (bin_dir / "mvn").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "FAKE_M2": str(repository),
            "ANDROID_USER_HOME": str(tmp_path / "android-home"), "HOME": os.environ.get("HOME", str(tmp_path))}


def build_with(tmp_path: Path, exported: Path, app_copy: Path, env: dict[str, str],
               **asked: object) -> Path:
    from prunedroid import data as cifar

    request = android.ApkRequest(**{"runtime": "lite", "builder": "direct", **asked})
    return android.build_apk(exported, lambda: cifar.load_cifar10(ROOT / "tests" / "none", download=False).test,
                             request, app_copy, env)


@pytest.fixture
def app_dir(tmp_path) -> Path:
    return Path(shutil.copytree(android.APP_DIR, tmp_path / "android_app",
                                ignore=shutil.ignore_patterns("assets", "build", ".gradle")))


def no_apk_left(app_dir: Path) -> bool:
    outputs = app_dir / "app" / "build" / "outputs"
    return not outputs.exists() or not [path for path in outputs.rglob("*") if path.is_file()]


@needs_tools
def test_a_runtime_no_repository_serves_stops_that_flavor_only(tmp_path, exported, app_dir, fake_m2,
                                                               synthetic_data):
    """The executorch flavor goes through the same steps (tools, model check, staging) up to its AAR, which Maven
    Central does not serve (org.pytorch:executorch-android, any version): one line naming it and the flavor that
    can still be built."""
    env = fake_maven_env(tmp_path, fake_m2)
    request = android.ApkRequest(runtime="executorch", builder="direct")
    with pytest.raises(PrunedroidError) as stopped:
        android.build_apk(exported, lambda: synthetic_data.test, request, app_dir, env)
    message = str(stopped.value)
    assert "\n" not in message and "org.pytorch:executorch-android:1.5.1" in message
    assert "--runtime lite can still be built" in message
    assert (android.assets_dir(app_dir) / "model.pte").is_file() and no_apk_left(app_dir)


@needs_tools
def test_a_damaged_library_in_mavens_cache_is_refused(tmp_path, exported, app_dir, fake_m2,
                                                      synthetic_data):
    env = fake_maven_env(tmp_path, fake_m2)
    aar = next(fake_m2.rglob("*.aar"))
    aar.write_bytes(aar.read_bytes()[:-7] + b"damaged")  # no longer what Maven downloaded
    request = android.ApkRequest(runtime="lite", builder="direct")
    with pytest.raises(PrunedroidError, match=r"in Maven's cache is damaged \(SHA-1 [0-9a-f]{40}, Maven recorded "
                                              r"[0-9a-f]{40}\): delete .* and build again") as refused:
        android.build_apk(exported, lambda: synthetic_data.test, request, app_dir, env)
    assert "\n" not in str(refused.value) and no_apk_left(app_dir)
    aar.write_bytes(b"not a zip archive")  # damaged before Maven recorded it: the checksum agrees, the AAR does not
    aar.with_name(aar.name + ".sha1").write_text(hashlib.sha1(b"not a zip archive").hexdigest())  # noqa: S324
    with pytest.raises(PrunedroidError, match=r"is not a readable AAR .*: delete .* and build again"):
        android.build_apk(exported, lambda: synthetic_data.test, request, app_dir, env)
    assert no_apk_left(app_dir)


@needs_tools
def test_an_abi_the_runtime_does_not_ship_is_refused(tmp_path, exported, app_dir, fake_m2,
                                                     synthetic_data):
    env = fake_maven_env(tmp_path, fake_m2)
    request = android.ApkRequest(runtime="lite", builder="direct", abis=("arm64-v8a", "x86"))
    with pytest.raises(PrunedroidError, match=r"--abi x86: pytorch_android_lite-1\.12\.2\.aar ships native code "
                                              r"for arm64-v8a, x86_64 only"):
        android.build_apk(exported, lambda: synthetic_data.test, request, app_dir, env)
    assert no_apk_left(app_dir)


@needs_tools
def test_a_model_calling_an_operator_the_runtime_lacks_is_refused(tmp_path, exported, app_dir, fake_m2,
                                                                 synthetic_data):
    """Every operator the .ptl calls must be registered in the pinned runtime's library (its schema string,
    "name.overload(", is in libpytorch_jni_lite.so): here a runtime with all of the model's but linear."""
    schemas = b"conv2d(Tensor input) flatten.using_ints(Tensor(a) self) max_pool2d(Tensor self) relu_(Tensor self)"
    put_lite_aar(fake_m2, b"\x7fELF" + schemas)
    request = android.ApkRequest(runtime="lite", builder="direct")
    with pytest.raises(PrunedroidError, match=r"pruned\.ptl calls aten::linear, which pytorch_android_lite-1\.12\.2"
                                              r"\.aar's interpreter does not register"):
        android.build_apk(exported, lambda: synthetic_data.test, request, app_dir, fake_maven_env(tmp_path, fake_m2))
    assert no_apk_left(app_dir)


def test_odd_build_options_are_refused_before_anything_is_read(tmp_path):
    missing = tmp_path / "none.json"  # refused before the model is looked for
    cases = ((("--abi", "arm64-v8a,,x86"), "--abi takes comma-separated ABIs among arm64-v8a, armeabi-v7a, x86, "
                                           "x86_64, each once; got 'arm64-v8a,,x86'"),
             (("--abi", "x86_64,x86_64"), "each once; got 'x86_64,x86_64'"),
             (("--abi", "mips"), "got 'mips'"),
             (("--builder", "bazel"), "--builder must be one of auto, gradle, direct, got 'bazel'"),
             (("--keystore", "k.jks"), "--keystore and --key-alias go together"),
             (("--keystore", str(missing), "--key-alias", "a"), "--keystore signs a release build"))
    results = run_invoke_each([(("build-apk", "--model", str(missing), *args), tmp_path) for args, _ in cases])
    for (_, said), result in zip(cases, results):
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and said in result.stderr, result.stderr
    assert not tmp_path.joinpath("k.jks").exists()


def test_missing_tools_are_one_line_naming_the_packages(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("java", "javac", "keytool", "mvn"):  # a JDK and Maven, no Android tools
        if shutil.which(name):
            (bin_dir / name).symlink_to(shutil.which(name))
    with pytest.raises(PrunedroidError) as missing:
        direct.find_tools(read_gradle_app(android.APP_DIR), {"PATH": str(bin_dir)})
    message = str(missing.value)
    assert "\n" not in message and "missing aapt2, apksigner" in message
    assert "sudo apt-get install aapt apksigner" in message
    newer = replace(read_gradle_app(android.APP_DIR), compile_sdk=99)  # a bump this build has no classes for
    with pytest.raises(PrunedroidError, match=r"compileSdk 99 without an Android SDK: no Robolectric android-all is "
                                              r"known for it .*; set ANDROID_HOME to an SDK with platforms/android-99"):
        direct.find_tools(newer, {"PATH": os.environ.get("PATH", "")})
    with pytest.raises(PrunedroidError, match=r"missing java, javac, keytool, mvn, aapt2, apksigner.*"
                                              r"apt-get install aapt apksigner maven openjdk-17-jdk-headless"):
        direct.find_tools(read_gradle_app(android.APP_DIR), {"PATH": str(tmp_path / "nothing")})


@needs_tools
def test_an_unwritable_output_or_a_hostile_sidecar_is_one_line_and_no_apk(tmp_path, exported, app_dir,
                                                                          fake_m2, synthetic_data):
    env = fake_maven_env(tmp_path, fake_m2)
    blocked = android.apk_path("lite", "debug", app_dir).parent
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the APK's folder goes")
    request = android.ApkRequest(runtime="lite", builder="direct")
    with pytest.raises(PrunedroidError, match=r"cannot write the APK into .*lite/debug: .*; make the app's build "
                                              r"folder writable") as refused:
        android.build_apk(exported, lambda: synthetic_data.test, request, app_dir, env)
    assert "\n" not in str(refused.value) and blocked.read_text() == "a file where the APK's folder goes"
    blocked.unlink()
    hostile = tmp_path / "hostile"
    shutil.copytree(exported.parent, hostile)
    sidecar = json.loads((hostile / exported.name).read_text())
    sidecar["ptl"] = "../../etc/passwd"
    (hostile / exported.name).write_text(json.dumps(sidecar))
    with pytest.raises(PrunedroidError) as refused:
        android.build_apk(hostile / exported.name, lambda: synthetic_data.test, request, app_dir, env)
    assert "../../etc/passwd" in str(refused.value) and no_apk_left(app_dir)
    assert not android.assets_dir(app_dir).exists()  # refused before anything was staged


def test_the_archive_aligns_stored_entries_and_is_reproducible(tmp_path):
    entries = [archive.Entry("AndroidManifest.xml", b"<manifest/>" * 50, stored=False),
               archive.Entry("resources.arsc", b"\x02\x00" * 33, stored=True),
               archive.Entry("assets/model.ptl", bytes(range(256)) * 9, stored=True),
               *(archive.Entry(f"lib/{abi}/libx{index}.so", b"\x7fELF" + bytes(index * 1001), stored=True)
                 for abi in ("arm64-v8a", "x86_64") for index in range(3))]
    first, second = tmp_path / "a.apk", tmp_path / "b.apk"
    archive.write_apk(entries, first)
    archive.write_apk(entries, second)
    assert first.read_bytes() == second.read_bytes()
    offsets = local_data_offsets(first)
    assert offsets == {name: (method, archive.data_offsets(first)[name]) for name, (method, _) in offsets.items()}
    for entry in entries:
        method, offset = offsets[entry.name]
        assert method == (0 if entry.stored else 8)
        assert offset % (16384 if entry.name.endswith(".so") else 4 if entry.stored else 1) == 0
    with zipfile.ZipFile(first) as zipped:
        assert zipped.testzip() is None
        assert {name: zipped.read(name) for name in zipped.namelist()} == {e.name: e.data for e in entries}
    real_tool("zipalign", "-c", "-p", "4", str(first)) if shutil.which("zipalign") else None
    with pytest.raises(ValueError, match="duplicate APK entries"):
        archive.write_apk(entries[:2] + entries[:1], tmp_path / "c.apk")


def test_a_damaged_build_gradle_is_one_line_naming_what_it_lacks(app_dir):
    gradle = app_dir / "app" / "build.gradle"
    text = gradle.read_text()
    assert read_gradle_app(app_dir).build_config["PYTORCH_LITE_VERSION"] == android.runtime_version(app_dir)
    for removed, said in (("def executorchVersion = '1.5.1'\n", r"uses \$\{executorchVersion\} without a `def "
                                                                 r"executorchVersion = '...'`"),
                          ("        minSdk 24\n", "declares no minSdk"),
                          ("noCompress += ['ptl', 'pte']", "declares no noCompress")):
        gradle.write_text(text.replace(removed, ""))
        with pytest.raises(PrunedroidError, match=said):
            read_gradle_app(app_dir)
