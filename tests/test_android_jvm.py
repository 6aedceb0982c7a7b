"""The app's Java on the JVM, with real published tools and libraries: javac against the Android framework's own
classes (org.robolectric:android-all, compileSdk's), aapt linking the manifest and resources against the platform's,
JUnit for the plain classes and Robolectric for the Activities - each Activity with a fake runner, because neither
native runtime loads on a host JVM. Maven fetches every jar from Maven Central into ~/.m2 (outside the repository)."""
import json
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import prunedroid.android.build as android
from prunedroid import data as cifar
from prunedroid.android.apk import direct
from prunedroid.android.apk.gradle_file import read_gradle_app
from prunedroid.android.device import read_result
from tests.conftest import REAL_CIFAR_DIR
from tests.test_android import APP, SOURCES, app_copy, exported, java_sources  # noqa: F401 (fixtures)

JAVA_STUBS = Path(__file__).parent / "java_stubs"
JVM_TESTS = APP / "app" / "src" / "test" / "java"
FRAMEWORK_RES = Path("/usr/share/android-framework-res/framework-res.apk")  # Debian's android-framework-res
GRADLE = (APP / "app" / "build.gradle").read_text()
COMPILE_SDK = int(re.search(r"compileSdk (\d+)", GRADLE).group(1))
# The Android framework Robolectric publishes for each SDK level, and the suffix of the pre-instrumented build each
# Robolectric release runs tests on (both from its DefaultSdkProvider; a new pin in build.gradle needs its row here).
ANDROID_ALL = direct.ANDROID_ALL[COMPILE_SDK].rsplit(":", 1)[1]
INSTRUMENTED = {"4.14.1": "i7"}[re.search(r"org\.robolectric:robolectric:([^']+)'", GRADLE).group(1)]

needs_jdk = pytest.mark.skipif(shutil.which("javac") is None or shutil.which("mvn") is None,
                               reason="needs a JDK's javac and Maven (mvn) to fetch the jars")
needs_aapt = pytest.mark.skipif(shutil.which("aapt") is None or not FRAMEWORK_RES.is_file(),
                                reason="needs the SDK's aapt and the platform's framework-res.apk (Debian: apt-get "
                                       "install aapt android-framework-res; .ci/run installs them)")


def gradle_dependency(artifact: str) -> str:
    """The "group:artifact:version" build.gradle declares for `artifact`."""
    return re.search(rf"Implementation '([\w.-]+:{artifact}:[^']+)'", GRADLE).group(1)


def maven_artifacts(dependencies: list[str], folder: Path, transitive: bool = True,
                    absent: str | None = None) -> list[Path]:
    """The files (jars, AARs) of `dependencies` ("group:artifact:version", ":aar" after it for an Android library),
    and of theirs unless not `transitive`, resolved by Maven from Maven Central into its own cache (~/.m2, outside
    the repository). Skips, saying why, where Maven Central cannot be reached and nothing is cached, or - given
    `absent`, the reason to skip - where Maven Central does not serve one of them."""
    folder.mkdir(parents=True, exist_ok=True)
    exclusions = "" if transitive else "<exclusions><exclusion><groupId>*</groupId><artifactId>*</artifactId>" \
                                       "</exclusion></exclusions>"
    items = "".join(f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version>"
                    f"<type>{kind[0] if kind else 'jar'}</type>{exclusions}</dependency>"
                    for g, a, v, *kind in (d.split(":") for d in dependencies))
    (folder / "pom.xml").write_text(f"<project><modelVersion>4.0.0</modelVersion><groupId>x</groupId><artifactId>x"
                                    f"</artifactId><version>1</version><dependencies>{items}</dependencies></project>")
    result = subprocess.run(["mvn", "-q", "-B", "dependency:build-classpath", "-Dmdep.outputFile=cp.txt"],
                            cwd=folder, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        said = result.stdout + result.stderr
        if "Could not transfer" in said or "Unknown host" in said:
            pytest.skip(f"Maven Central cannot be reached and {', '.join(dependencies)} are not in ~/.m2")
        if absent and ("Could not find artifact" in said or "was not found in" in said):
            pytest.skip(absent)
        raise AssertionError(said[-3000:])
    return [Path(path) for path in (folder / "cp.txt").read_text().strip().split(":")]


def maven_jars(dependencies: list[str], folder: Path, transitive: bool = True) -> list[Path]:
    """maven_artifacts as a JVM classpath: each AAR's classes.jar in its place."""
    return [classes_jar(path, folder) for path in maven_artifacts(dependencies, folder, transitive)]


def classes_jar(path: Path, folder: Path) -> Path:
    """`path` itself for a jar; for an AAR (an Android library: classes.jar beside resources and native code) its
    classes.jar, extracted into `folder` as the Android Gradle Plugin does for a unit test's classpath."""
    if path.suffix != ".aar":
        return path
    with zipfile.ZipFile(path) as aar:
        jar = folder / f"{path.stem}.jar"
        jar.write_bytes(aar.read("classes.jar"))
    return jar


def classpath(jars: list[Path]) -> str:
    return ":".join(map(str, jars))


def android_framework(folder: Path) -> Path:
    """compileSdk's framework classes, as Robolectric publishes them: what the app's Java is compiled against."""
    return maven_jars([f"org.robolectric:android-all:{ANDROID_ALL}"], folder, transitive=False)[0]


def link_resources(folder: Path, assets: Path | None = None) -> Path:
    """aapt's package step as the Android build runs it: the manifest with build.gradle's namespace and SDK levels
    merged in (as the Android Gradle Plugin's manifest merger does), linked with the resources (and `assets`)
    against the platform's own resources into folder/resources.apk, and R.java under folder/r. Returns the APK."""
    levels = {name: re.search(rf"{name} (\d+)", GRADLE).group(1) for name in ("minSdk", "targetSdk")}
    manifest = (APP / "app/src/main/AndroidManifest.xml").read_text()
    merged = folder / "AndroidManifest.xml"
    folder.mkdir(parents=True, exist_ok=True)
    merged.write_text(re.sub(r"(<manifest [^>]*>)", rf'\1<uses-sdk android:minSdkVersion="{levels["minSdk"]}" '
                                                  rf'android:targetSdkVersion="{levels["targetSdk"]}" />',
                             manifest.replace("<manifest ", f'<manifest package="{android.PACKAGE}" ', 1), count=1))
    (folder / "r").mkdir(exist_ok=True)
    linked = subprocess.run(["aapt", "package", "-f", "-M", str(merged), "-S", str(APP / "app/src/main/res"),
                             *(["-A", str(assets)] if assets else []), "-I", str(FRAMEWORK_RES),
                             "-F", str(folder / "resources.apk"), "-J", str(folder / "r")],
                            capture_output=True, text=True, timeout=120)
    assert linked.returncode == 0 and not linked.stderr.strip(), linked.stderr[-3000:]
    return folder / "resources.apk"


def build_config(folder: Path) -> Path:
    """BuildConfig.java as the direct build writes it (the Android Gradle Plugin's fields and build.gradle's)."""
    return direct.write_build_config(read_gradle_app(APP), "executorch", True, folder)


def flavor_sources(flavor: str) -> list[Path]:
    """main's Java plus the flavor's own source set, as Gradle compiles a flavor."""
    flavored = sorted((APP / "app" / "src" / flavor / "java").rglob("*.java"))
    assert flavored, f"no src/{flavor}/java"
    return [*SOURCES.glob("*.java"), *flavored]


def javac(sources: list[Path], jars: list[Path], out: Path, *options: str) -> None:
    """-classfile: the framework jar's own annotations name methods its stripped annotation classes lack."""
    result = subprocess.run(["javac", "--release", "17", "-Xlint:all,-classfile", *options, "-cp", classpath(jars),
                             "-d", str(out), *map(str, sources)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@needs_aapt
def test_the_manifest_and_resources_link_with_the_sdks_aapt(tmp_path):
    """aapt links the manifest and resources against the Android platform's own resources, as the build does: a
    misspelt attribute, a missing @string or a bad theme fails here."""
    apk = link_resources(tmp_path)
    tree = subprocess.run(["aapt", "dump", "xmltree", str(apk), "AndroidManifest.xml"],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    assert 'android:permission(0x01010006)="android.permission.DUMP"' in tree  # resolved by the platform
    layout = subprocess.run(["aapt", "dump", "xmltree", str(apk), "res/layout/activity_main.xml"],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    # targetSdk 35 draws edge to edge: the root takes the system bars' insets, so no button sits under them.
    assert layout.split("E: ", 2)[1].startswith("FrameLayout") and "android:fitsSystemWindows" in layout
    r_java = next(tmp_path.rglob("R.java")).read_text()
    assert set(re.findall(r"R\.id\.(\w+)", java_sources())) <= set(re.findall(r"public static final int (\w+)=",
                                                                             r_java))


def runtime_classes(flavor: str, folder: Path) -> tuple[list[Path], list[Path]]:
    """What a flavor's runtime calls compile against: (jars, stub sources). The lite flavor gets the real
    pytorch_android_lite classes at the pinned release; executorch-android is served at no version here, so that
    flavor compiles against the stubs in tests/java_stubs (its published signatures, docs/android.md)."""
    if flavor == "lite":
        pinned = android.pinned_version("pytorchLiteVersion")
        return maven_jars([f"org.pytorch:pytorch_android_lite:{pinned}:aar"], folder / "lite"), []
    return [], sorted(JAVA_STUBS.rglob("*.java"))


@needs_jdk
@needs_aapt
def test_the_apps_java_compiles_against_the_android_framework_and_runtimes(tmp_path):
    """javac 17 (the app's language level) on each flavor's sources with the R aapt generates and BuildConfig,
    against compileSdk's real framework classes and the flavor's runtime (runtime_classes): a misspelt method, a
    wrong argument type, a deprecated call or a checked exception left unhandled fails here rather than in a Gradle
    build nobody here can run."""
    link_resources(tmp_path / "res")
    generated = [*(tmp_path / "res" / "r").rglob("R.java"), build_config(tmp_path / "generated")]
    framework = android_framework(tmp_path / "maven")
    assert {path.relative_to(JAVA_STUBS).parent for path in JAVA_STUBS.rglob("*.java")} == {
        Path("org/pytorch/executorch")}  # Android, org.json and the lite runtime are the real classes
    for flavor in android.RUNTIMES:
        classes = tmp_path / f"classes-{flavor}"
        jars, stubs = runtime_classes(flavor, tmp_path / "maven")
        javac([*flavor_sources(flavor), *generated, *stubs], [framework, *jars], classes, "-Werror")
        compiled = {path.stem for path in classes.rglob("*.class")}
        assert {path.stem for path in flavor_sources(flavor)} <= compiled


@needs_jdk
@needs_aapt
def test_the_apps_junit_and_robolectric_tests_pass_on_the_jvm(tmp_path, exported, synthetic_data,  # noqa: F811
                                                             app_copy):  # noqa: F811
    """src/test on the JVM as `gradle testExecutorchDebugUnitTest` runs it (JUnit and Robolectric from Maven
    Central, the executorch flavor): the plain classes' tests, and the Activities with a fake runner on the staged
    assets - rotation during a load, a native library that will not load, an inference error, hostile benchmark
    extras, a 12-megapixel gallery image. Then what the app computed is checked from this side: the tensors it fed
    the runner equal the training pipeline's normalisation of the same images (the real CIFAR-10 test images where
    they lie beside the checkout, as in CI; else synthetic ones), and the benchmark result it wrote is what
    bench-device reads."""
    images = synthetic_data.test if cifar.missing_batches(REAL_CIFAR_DIR) else cifar.load_test(REAL_CIFAR_DIR,
                                                                                                 download=False)
    assets = android.stage_assets(exported, images, "executorch", "fp32", app_copy, samples=5)
    link_resources(tmp_path / "res", assets)
    test_jars = maven_jars([gradle_dependency("junit"), gradle_dependency("robolectric")], tmp_path / "maven")
    framework = android_framework(tmp_path / "maven-framework")
    instrumented = maven_jars([f"org.robolectric:android-all-instrumented:{ANDROID_ALL}-{INSTRUMENTED}"],
                              tmp_path / "maven-instrumented", transitive=False)[0]
    classes = tmp_path / "classes"
    generated = [*(tmp_path / "res" / "r").rglob("R.java"), build_config(tmp_path / "generated")]
    tests = sorted(JVM_TESTS.rglob("*.java"))
    javac([*flavor_sources("executorch"), *generated, *sorted(JAVA_STUBS.rglob("*.java")), *tests],
          [*test_jars, framework], classes)
    config = classes / "com" / "android" / "tools" / "test_config.properties"  # where AGP puts it for Robolectric
    config.parent.mkdir(parents=True)
    config.write_text(f"android_merged_manifest={tmp_path / 'res' / 'AndroidManifest.xml'}\n"
                      f"android_resource_apk={tmp_path / 'res' / 'resources.apk'}\n"
                      f"android_merged_assets={assets}\nandroid_custom_package={android.PACKAGE}\n")
    out = tmp_path / "out"
    out.mkdir()
    names = [".".join(p.relative_to(JVM_TESTS).with_suffix("").parts) for p in tests if p.stem.endswith("Test")]
    ran = subprocess.run(["java", f"-Dprunedroid.out={out}", "-Drobolectric.offline=true",
                          f"-Drobolectric.dependency.dir={instrumented.parent}", "-cp",
                          classpath([classes, *test_jars, framework]), "org.junit.runner.JUnitCore", *names],
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0 and re.search(r"OK \(\d+ tests\)", ran.stdout), (ran.stdout + ran.stderr)[-6000:]
    assert {"MainActivityTest", "BenchmarkActivityTest", "BenchRequestTest", "ModelCopyTest"} <= {
        name.rsplit(".", 1)[1] for name in names}
    fed = json.loads((out / "preprocessed.json").read_text())
    assert sorted(fed) == sorted(path.name for path in (assets / "samples").iterdir())
    for name, values in fed.items():
        index = int(name.split("_", 1)[0])
        expected = cifar.normalize(images.images[index:index + 1].float())[0]
        assert np.abs(np.array(values, dtype=np.float32).reshape(3, 32, 32) - expected.numpy()).max() <= 1e-6
    result = read_result((out / "bench-result.json").read_text(), "pruned", runs=7)
    assert result["runtime"] == f"executorch-android {android.pinned_version('executorchVersion')}"
    assert torch.tensor(result["latencies_ms"]).eq(2.0).all()


@needs_jdk
def test_the_default_flavors_native_libraries_load_on_16k_page_phones(tmp_path):
    """Google Play requires apps targeting Android 15+ to load on 16 KB-page phones: every .so of the default
    flavor's runtime, in every ABI the flavor packages, has its loadable segments 16 KB-aligned. (The lite flavor's
    are not - benchmarks/results/native_libraries.md - which docs/android.md says.)"""
    from prunedroid.android.elf import native_libraries

    pinned = android.pinned_version("executorchVersion")
    aar = maven_artifacts([f"org.pytorch:executorch-android:{pinned}:aar"], tmp_path, transitive=False,
                          absent=f"org.pytorch:executorch-android:{pinned} is not served by this machine's Maven "
                                 f"Central mirror (nor any version of it): its libraries cannot be read here")[0]
    abis = set(re.findall(r"'([\w-]+)'", re.search(r"executorch \{.*?abiFilters ([^\n]+)", GRADLE, re.S).group(1)))
    libraries = native_libraries(aar)
    assert abis <= {library.abi for library in libraries}
    assert [library for library in libraries if library.abi in abis and not library.page_16k_ready] == []
