"""The Android app, checked from the Python side: its sources against its manifest and resources, the assets
`build-apk` stages against the exported model, and `build-apk` itself against fakes of `java` and `gradle` that
print what the real tools print."""
import json
import re
import shutil
import stat
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.jit.mobile

import prunedroid.android.build as android
from prunedroid import data as cifar
from prunedroid.android.apk.gradle_file import read_gradle_app
from prunedroid.deploy.export import export_checkpoint
from prunedroid.deploy.formats import TARGET_BYTECODE_VERSION
from prunedroid.errors import PrunedroidError
from prunedroid.models import vgg16_spec
from prunedroid.training.checkpoint import Checkpoint
from tests.conftest import run_invoke
from tests.test_prune import trained_like

APP = android.APP_DIR
SOURCES = APP / "app" / "src" / "main" / "java" / Path(*android.PACKAGE.split("."))
ANDROID_NS = "{http://schemas.android.com/apk/res/android}"


def java_sources() -> str:
    return "\n".join(path.read_text() for path in SOURCES.glob("*.java"))


def test_every_manifest_activity_exists_and_every_xml_file_parses():
    xml_files = [APP / "app" / "src" / "main" / "AndroidManifest.xml", *(APP / "app" / "src" / "main" / "res").rglob(
        "*.xml")]
    assert len(xml_files) >= 3
    for path in xml_files:
        ET.parse(path)  # raises on malformed XML
    activities = ET.parse(xml_files[0]).getroot().iter("activity")
    activities = list(activities)
    names = [activity.get(f"{ANDROID_NS}name") for activity in activities]
    assert names == [".MainActivity", ".BenchmarkActivity"]
    # Only the shell (adb) may start the benchmark: other apps cannot hold DUMP.
    assert activities[1].get(f"{ANDROID_NS}permission") == "android.permission.DUMP"
    for name in names:
        source = SOURCES / f"{name[1:]}.java"
        assert source.is_file() and re.search(rf"public class {name[1:]} extends Activity", source.read_text())
    gradle = (APP / "app" / "build.gradle").read_text()
    assert f"namespace '{android.PACKAGE}'" in gradle and f"applicationId '{android.PACKAGE}'" in gradle


def test_the_gradle_files_avoid_what_stops_a_stock_build():
    """What an Android developer's `./gradlew assembleDebug` would stop at, read from the build files: both runtimes'
    fbjni builds in one APK (duplicate classes); AndroidX dependencies without useAndroidX; a strict Java toolchain
    where the only JDK is Android Studio's; an ABI packaged that the flavor's runtime does not ship."""
    properties = dict(line.split("=", 1) for line in (APP / "gradle.properties").read_text().splitlines()
                      if "=" in line and not line.startswith("#"))
    assert properties.get("android.useAndroidX") == "true"
    gradle = (APP / "app" / "build.gradle").read_text()
    assert "toolchain" not in gradle and "JavaVersion.VERSION_17" in gradle
    declared = gradle.split("productFlavors {", 1)[1]
    flavors = dict(re.findall(r"\n        (\w+) \{\n(.*?)\n        \}", declared.split("\n    }", 1)[0], flags=re.S))
    assert set(flavors) == set(android.RUNTIMES)  # one runtime, so one fbjni, per APK
    # Phones and emulators, in both flavors: ABIs both runtimes' AARs ship (the direct build refuses others).
    assert read_gradle_app(APP).abis == {"executorch": ("arm64-v8a", "x86_64"), "lite": ("arm64-v8a", "x86_64")}
    assert "isDefault true" in flavors["executorch"] and "pickFirst" not in gradle
    for flavor in flavors:  # each runtime is a dependency of its own flavor only
        assert len(re.findall(rf"^    {flavor}Implementation ", gradle, flags=re.M)) == 1
    assert not re.search(r"^    implementation .*org\.pytorch", gradle, flags=re.M)


def test_resources_the_code_names_exist():
    layout_ids = set(re.findall(r'@\+id/(\w+)', (APP / "app/src/main/res/layout/activity_main.xml").read_text()))
    assert set(re.findall(r"R\.id\.(\w+)", java_sources())) <= layout_ids
    strings = {e.get("name") for e in ET.parse(APP / "app/src/main/res/values/strings.xml").getroot()}
    used = set()
    for path in [APP / "app/src/main/AndroidManifest.xml", *(APP / "app/src/main/res").rglob("*.xml")]:
        used |= set(re.findall(r"@string/(\w+)", path.read_text()))
    assert used and used <= strings


def test_the_app_reads_what_export_and_staging_write(staged):
    sources = java_sources()
    # Asset names and the sidecar keys the Java reads are the ones staged; the model file is named in model.json.
    assert set(re.findall(r'_ASSET = "([^"]+)"', sources)) == {"model.json", "labels.txt"}
    sidecar = json.loads((staged / "model.json").read_text())
    model_file = sidecar["app_model"]["file"]
    assert '"samples"' in sources and {*android.ASSETS, model_file} == {p.name for p in staged.iterdir()}
    read_keys = set(re.findall(r'sidecar\.get(?:JSONArray|JSONObject|String|Int)\("(\w+)"\)', sources))
    assert read_keys == {"mean", "std", "input_shape", "app_model"} and read_keys <= set(sidecar)
    model_keys = set(re.findall(r'staged\.getString\("(\w+)"\)', sources))
    assert model_keys == {"file", "sha256", "precision"} and model_keys <= set(sidecar["app_model"])
    # The staged file is the one the runtime's flavor opens (Runner refuses any other extension).
    runtime = sidecar["app_model"]["runtime"]
    flavor = (APP / "app" / "src" / runtime / "java" / Path(*android.PACKAGE.split(".")) / "FlavorRunner.java")
    assert model_file.endswith(re.search(r'EXTENSION = "([^"]+)"', flavor.read_text()).group(1))
    assert "if (!path.endsWith(FlavorRunner.EXTENSION))" in sources
    # No preprocessing constant is typed into the Java.
    assert not re.search(r"0\.49|0\.48|0\.44|0\.24|0\.26", sources)


def test_the_pinned_executorch_reads_what_the_exporter_writes():
    """ExecuTorch guarantees that a runtime reads .pte files from its own release and earlier ones, so the app's
    executorch-android is the version of the Python package that writes them."""
    from importlib.metadata import version

    assert android.pinned_version("executorchVersion") == version("executorch").split("+")[0]
    pinned = (APP / "app" / "build.gradle").read_text()
    assert 'executorchImplementation "org.pytorch:executorch-android:${executorchVersion}"' in pinned


def test_the_pinned_runtime_reads_what_export_writes():
    version = android.runtime_version()
    assert version in android.READABLE_BYTECODE
    assert TARGET_BYTECODE_VERSION in android.READABLE_BYTECODE[version]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, synthetic_data) -> Path:
    folder = tmp_path_factory.mktemp("android-export")
    model = trained_like(vgg16_spec(0.0625))
    Checkpoint(arch=model.spec.to_dict(), state_dict=model.state_dict(),
               metrics={"test": {"top1": 0.1, "images": 10}}).save(folder / "m.pt")
    return export_checkpoint(folder / "m.pt", synthetic_data.test, folder / "out", "pruned").sidecar


@pytest.fixture(scope="module")
def app_copy(tmp_path_factory) -> Path:
    """The app's sources copied, so staging and fake builds never touch the working tree."""
    return Path(shutil.copytree(APP, tmp_path_factory.mktemp("app") / "android_app",
                                ignore=shutil.ignore_patterns("assets", "build", ".gradle")))


@pytest.fixture(scope="module", params=android.RUNTIMES)
def staged(request, exported, synthetic_data, app_copy) -> Path:
    return android.stage_assets(exported, synthetic_data.test, request.param, "fp32", app_copy, samples=5)


def read_png(data: bytes) -> np.ndarray:
    """Decodes the 8-bit RGB, filter-0 PNGs png_bytes writes (a reader independent of the writer's code path)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks = 8, {}
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        assert struct.unpack(">I", data[position + 8 + length:position + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        position += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2)
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + 3 * width)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(height, width, 3)


def test_staged_assets_match_the_exported_model(staged, exported, synthetic_data):
    from prunedroid.deploy.pte import predictor

    sidecar = json.loads((staged / "model.json").read_text())
    assert sidecar["mean"] == list(cifar.MEAN) and sidecar["std"] == list(cifar.STD)
    assert (staged / "labels.txt").read_text().splitlines() == sidecar["classes"] == list(cifar.CLASSES)
    staged_model = staged / sidecar["app_model"]["file"]
    exported_model = exported.parent / sidecar[staged_model.suffix[1:]]
    assert staged_model.read_bytes() == exported_model.read_bytes()
    assert sidecar["app_model"]["sha256"] == sidecar[staged_model.suffix[1:] + "_sha256"]
    samples = sorted((staged / "samples").iterdir())
    assert [p.name for p in samples] == [f"{i:03d}_{cifar.CLASSES[int(synthetic_data.test.labels[i])]}.png"
                                         for i in range(5)]
    pixels = read_png(samples[0].read_bytes())
    assert np.array_equal(pixels, synthetic_data.test.images[0].permute(1, 2, 0).numpy())
    # The app's preprocessing - pixel / 255, minus mean, over std, values from model.json - then the runtime the
    # phone uses for the staged file gives the logits training's own normalisation gives.
    image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().unsqueeze(0)
    app_input = (image * sidecar["pixel_scale"] - torch.tensor(sidecar["mean"]).view(1, 3, 1, 1)) / torch.tensor(
        sidecar["std"]).view(1, 3, 1, 1)
    if sidecar["app_model"]["runtime"] == "lite":
        ptl = str(staged_model)
        assert torch.jit.mobile._get_model_bytecode_version(ptl) in android.READABLE_BYTECODE[
            android.runtime_version()]
        run = torch.jit.mobile._load_for_lite_interpreter(ptl)
    else:
        run = predictor(staged_model)
    reference = run(cifar.normalize(synthetic_data.test.images[:1]))
    assert torch.allclose(run(app_input), reference, atol=1e-4)
    # The Java computes the same: channel c of pixel i from the ARGB int, (value / 255 - mean[c]) / std[c].
    assert "(value / 255f - mean[channel]) / std[channel]" in java_sources()


FAKE_JAVA = """#!/bin/sh
# `java -version` as OpenJDK prints it: on stderr.
echo 'openjdk version "{version}" 2025-04-15' >&2
echo 'OpenJDK Runtime Environment (build {version}+6-Ubuntu)' >&2
"""

# Gradle's console output for the two outcomes the task handles; the failure text is AGP's for a missing SDK.
FAKE_GRADLE = """#!/bin/sh
task="$1"
if [ -z "$ANDROID_HOME" ] && ! grep -q '^sdk.dir=' local.properties 2>/dev/null; then
  echo "FAILURE: Build failed with an exception." >&2
  echo "* What went wrong:" >&2
  echo "Could not determine the dependencies of task ':app:compileDebugJavaWithJavac'." >&2
  echo "> SDK location not found. Define a valid SDK location with an ANDROID_HOME environment variable or by \
setting the sdk.dir path in your project's local properties file at '$PWD/local.properties'." >&2
  echo "BUILD FAILED in 2s" >&2
  exit 1
fi
if [ -n "$FAKE_GRADLE_FAIL" ]; then
  echo "> Task :app:compileDebugJavaWithJavac FAILED" ; echo "FAILURE: Build failed with an exception." >&2
  echo "BUILD FAILED in 9s" >&2; exit 1
fi
rest="${task#assemble}"
case "$rest" in
  Executorch*) flavor=executorch; variant="${rest#Executorch}" ;;
  Lite*) flavor=lite; variant="${rest#Lite}" ;;
  *) echo "FAILURE: Build failed with an exception." >&2
     echo "* What went wrong:" >&2
     echo "Task '$task' is ambiguous in project ':app'. Candidates are: 'assembleExecutorch$rest', \
'assembleLite$rest'." >&2
     exit 1 ;;
esac
variant=$(echo "$variant" | tr 'A-Z' 'a-z')
ls app/src/main/assets/model.pt[el] >/dev/null 2>&1 || { echo "assets not staged" >&2; exit 1; }
mkdir -p "app/build/outputs/apk/$flavor/$variant"
head -c 4096 /dev/zero > "app/build/outputs/apk/$flavor/$variant/app-$flavor-$variant.apk"
echo "> Task :app:$task"
echo ""
echo "BUILD SUCCESSFUL in 41s"
echo "35 actionable tasks: 35 executed"
"""


def tool(folder: Path, name: str, script: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_missing_prerequisites_are_each_named_with_the_fix(tmp_path, app_copy):
    with pytest.raises(PrunedroidError) as nothing:
        android.find_build_tools(app_copy, {"PATH": str(tmp_path / "empty")})
    message = str(nothing.value)
    assert "JDK 17 or newer (found: none)" in message and "ANDROID_HOME" in message and "gradle wrapper" in message
    for version, found in (("11.0.22", "JDK 11"), ("1.8.0_392", "JDK 8")):
        tool(tmp_path / f"bin{found[-2:].strip()}", "java", FAKE_JAVA.format(version=version))
        with pytest.raises(PrunedroidError, match=f"found: {found}"):
            android.find_build_tools(app_copy, {"PATH": str(tmp_path / f"bin{found[-2:].strip()}")})


def test_build_apk_with_fake_tools(tmp_path, app_copy, exported, synthetic_data):
    bin_dir, sdk = tmp_path / "bin", tmp_path / "sdk"
    sdk.mkdir()
    tool(bin_dir, "java", FAKE_JAVA.format(version="17.0.15"))
    tool(bin_dir, "gradle", FAKE_GRADLE)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    (app_copy / "local.properties").write_text(f"sdk.dir={sdk}\n")  # found there when ANDROID_HOME is unset
    apk = android.build_apk(exported, lambda: synthetic_data.test, android.ApkRequest("release"), app_copy, env)
    assert apk == app_copy / "app/build/outputs/apk/executorch/release/app-executorch-release.apk"
    assert apk.stat().st_size == 4096
    lite = android.build_apk(exported, lambda: synthetic_data.test, android.ApkRequest(runtime="lite"), app_copy, env)
    assert lite == android.apk_path("lite", "debug", app_copy) and lite.name == "app-lite-debug.apk"
    assert (android.assets_dir(app_copy) / "model.ptl").is_file()
    with pytest.raises(PrunedroidError, match=r"assembleExecutorchDebug` failed .*\n(.*\n)*BUILD FAILED in 9s"):
        android.build_apk(exported, lambda: synthetic_data.test, android.ApkRequest(), app_copy,
                          {**env, "FAKE_GRADLE_FAIL": "1"})
    assert (android.assets_dir(app_copy) / "model.pte").is_file()  # staged assets stay for the next try
    with pytest.raises(PrunedroidError, match="--variant must be debug or release"):
        android.build_apk(exported, lambda: synthetic_data.test, android.ApkRequest("profile"), app_copy, env)
    with pytest.raises(PrunedroidError, match="--abi and --keystore apply to the build without Gradle"):
        android.build_apk(exported, lambda: synthetic_data.test, android.ApkRequest(abis=("x86",)), app_copy, env)
    # The project's own wrapper wins over a Gradle on PATH, as `gradle wrapper` or Android Studio leave it.
    tool(app_copy, "gradlew", FAKE_GRADLE)
    (bin_dir / "gradle").unlink()
    try:
        assert android.build_apk(exported, lambda: synthetic_data.test, android.ApkRequest(), app_copy,
                                 env).name == "app-executorch-debug.apk"
    finally:
        (app_copy / "gradlew").unlink()


def test_a_stale_or_missing_model_is_refused(tmp_path, exported):
    with pytest.raises(PrunedroidError, match="run `invoke export"):
        android.check_model(tmp_path / "none.json")
    copy = tmp_path / "copy"
    shutil.copytree(exported.parent, copy)
    for runtime, suffix in (("lite", ".ptl"), ("executorch", ".pte")):
        (copy / f"pruned{suffix}").write_bytes(b"not the exported file")
        with pytest.raises(PrunedroidError, match="is not the file pruned.json describes"):
            android.check_model(copy / "pruned.json", runtime)
    with pytest.raises(PrunedroidError, match="no int8 model; export again with --quantize int8"):
        android.check_model(exported, "executorch", "int8")
    with pytest.raises(PrunedroidError, match="no int8 model; export again with --quantize int8"):
        android.check_model(exported, "lite", "int8")


def test_a_pte_newer_than_the_apps_executorch_is_refused(tmp_path, exported):
    copy = tmp_path / "copy"
    shutil.copytree(exported.parent, copy)
    sidecar = json.loads((copy / "pruned.json").read_text())
    sidecar["executorch"]["version"] = "9.1.0+cpu"
    (copy / "pruned.json").write_text(json.dumps(sidecar))
    with pytest.raises(PrunedroidError, match="raise executorchVersion in app/build.gradle to 9.1.0"):
        android.check_model(copy / "pruned.json")
    assert android.check_model(exported)[1].asset == "model.pte"


def test_build_apk_from_the_command_line_names_everything_missing(tmp_path):
    result = run_invoke("build-apk", "--model", str(tmp_path / "export" / "model.json"), "--builder", "gradle")
    assert result.returncode == 2 and "run `invoke export" in result.stderr and "Traceback" not in result.stderr
    if not shutil.which("gradle"):  # this machine and CI have no Gradle
        assert "the Android SDK (found: none)" in result.stderr and "Gradle:" in result.stderr
