"""The APK built without Gradle, step by step as the Android Gradle Plugin builds it, by the same tools: Maven
resolves the flavor's runtime AAR and D8; aapt2 compiles and links the resources and manifest against the platform's
resources and generates R; javac compiles the app with R and BuildConfig against the platform's classes; D8 dexes it
with the runtime's classes; the APK is written with its native libraries stored at 16 KB boundaries; apksigner signs
it. Everything is written below the app's build folder except Maven's cache and the debug keystore, which live where
the Android tools keep them."""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from prunedroid.android.apk import maven
from prunedroid.android.apk.archive import Entry, entries_of, write_apk
from prunedroid.android.apk.gradle_file import GradleApp
from prunedroid.errors import PrunedroidError

MIN_JDK = 17  # the app's Java level (compileOptions), and what the Android Gradle Plugin 8.x runs on
D8 = "com.android.tools:r8:8.5.35"  # the SDK's dexer, published on Maven Central inside R8's jar
# The framework's classes at compileSdk, as Robolectric publishes them on Maven Central: what javac and D8 compile
# against when no Android SDK's platforms/android-<compileSdk>/android.jar is there.
ANDROID_ALL = {35: "org.robolectric:android-all:15-robolectric-12650502"}
DEBIAN_FRAMEWORK = Path("/usr/share/android-framework-res/framework-res.apk")  # API 29's resources
# The Debian packages that provide each tool the build runs.
PACKAGES = {"java": "openjdk-17-jdk-headless", "javac": "openjdk-17-jdk-headless",
            "keytool": "openjdk-17-jdk-headless", "mvn": "maven", "aapt2": "aapt", "apksigner": "apksigner",
            "framework-res.apk": "android-framework-res"}
# The Android Gradle Plugin's debug key: a well-known password, so any machine's debug builds install over each other.
DEBUG_ALIAS, DEBUG_PASSWORD = "androiddebugkey", "android"
TOOL_TIMEOUT_S = 900


def jdk_major(java: str) -> int | None:
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


@dataclass(frozen=True)
class Tools:
    """The programs and platform files a build runs with. `framework_resources`: what aapt2 links against;
    `android_jar`: the SDK's platform classes, or None to use ANDROID_ALL from Maven."""

    java: str
    javac: str
    keytool: str
    mvn: str
    aapt2: str
    apksigner: str
    framework_resources: Path
    android_jar: Path | None
    compile_sdk_stamp: bool  # True when linking against an older platform than compileSdk: stamp compileSdk in
    env: Mapping[str, str]  # the environment the tools run in


def _sdk_platform(env: Mapping[str, str], compile_sdk: int) -> tuple[Path, Path] | None:
    """(aapt2, android.jar) of an Android SDK with build-tools and platforms/android-<compileSdk>, or None."""
    home = env.get("ANDROID_HOME") or env.get("ANDROID_SDK_ROOT")
    if not home:
        return None
    jar = Path(home) / "platforms" / f"android-{compile_sdk}" / "android.jar"
    linkers = sorted(Path(home).glob("build-tools/*/aapt2"))
    return (linkers[-1], jar) if jar.is_file() and linkers else None


def find_tools(app: GradleApp, env: Mapping[str, str]) -> Tools:
    """The tools on PATH (JAVA_HOME's java first) and the best platform available - an SDK's aapt2 and android.jar
    at compileSdk when ANDROID_HOME has them, else Debian's aapt2 with API 29's framework-res.apk - or one line naming
    what is missing and the packages that provide it."""
    path = env.get("PATH", "")
    java_bin = Path(env["JAVA_HOME"]) / "bin" if env.get("JAVA_HOME") else None

    def which(name: str) -> str | None:
        if java_bin is not None and name in ("java", "javac", "keytool") and (java_bin / name).is_file():
            return str(java_bin / name)
        return shutil.which(name, path=path)

    found = {name: which(name) for name in ("java", "javac", "keytool", "mvn", "aapt2", "apksigner")}
    sdk = _sdk_platform(env, app.compile_sdk)
    if sdk:
        found["aapt2"] = str(sdk[0])
    missing = [name for name, where in found.items() if where is None]
    major = jdk_major(found["java"]) if found["java"] else None
    if found["java"] and (major is None or major < MIN_JDK):
        missing.append(f"java (JDK {MIN_JDK}+, found {f'JDK {major}' if major else 'an unreadable version'})")
    if not sdk and not DEBIAN_FRAMEWORK.is_file():
        missing.append("framework-res.apk")
    if not sdk and app.compile_sdk not in ANDROID_ALL:
        raise PrunedroidError(f"compileSdk {app.compile_sdk} without an Android SDK: no Robolectric android-all is "
                              f"known for it (prunedroid/android/apk/direct.py ANDROID_ALL: {sorted(ANDROID_ALL)}); "
                              f"set ANDROID_HOME to an SDK with platforms/android-{app.compile_sdk}, or add its row")
    if missing:
        packages = sorted({PACKAGES[name.split(" ")[0]] for name in missing})
        raise PrunedroidError(f"cannot build the APK without Gradle: missing {', '.join(missing)}; install "
                              f"`sudo apt-get install {' '.join(packages)}` (or Android Studio, with ANDROID_HOME set)")
    programs = {name: str(where) for name, where in found.items()}
    return Tools(java=programs["java"], javac=programs["javac"], keytool=programs["keytool"], mvn=programs["mvn"],
                 aapt2=programs["aapt2"], apksigner=programs["apksigner"],
                 framework_resources=sdk[1] if sdk else DEBIAN_FRAMEWORK, android_jar=sdk[1] if sdk else None,
                 compile_sdk_stamp=not sdk, env=dict(env))


@dataclass(frozen=True)
class Signing:
    """The key apksigner signs with: a keystore, the key's alias, and the environment variable that holds the
    password (None: the debug key's well-known one)."""

    keystore: Path
    alias: str
    password_env: str | None = None

    def apksigner_options(self) -> list[str]:
        password = f"env:{self.password_env}" if self.password_env else f"pass:{DEBUG_PASSWORD}"
        return ["--ks", str(self.keystore), "--ks-key-alias", self.alias, "--ks-pass", password, "--key-pass", password]


def debug_signing(tools: Tools, env: Mapping[str, str]) -> Signing:
    """The debug key where the Android tools keep it ($ANDROID_USER_HOME, else ~/.android: debug.keystore), made with
    keytool as the Android Gradle Plugin makes it when there is none."""
    home = Path(env["ANDROID_USER_HOME"]) if env.get("ANDROID_USER_HOME") else Path(env.get("HOME", "~")) / ".android"
    keystore = home.expanduser() / "debug.keystore"
    if not keystore.is_file():
        keystore.parent.mkdir(parents=True, exist_ok=True)
        made = keystore.with_name(f".debug.keystore.{secrets.token_hex(4)}.tmp")
        try:
            _run([tools.keytool, "-genkeypair", "-keystore", str(made), "-storepass", DEBUG_PASSWORD, "-alias",
                  DEBUG_ALIAS, "-keypass", DEBUG_PASSWORD, "-keyalg", "RSA", "-keysize", "2048", "-validity", "10000",
                  "-dname", "CN=Android Debug,O=Android,C=US"], "keytool (making the debug key)", tools.env)
            with contextlib.suppress(FileExistsError):  # another build made one meanwhile: every build uses that one
                os.link(made, keystore)
        finally:
            made.unlink(missing_ok=True)
    return Signing(keystore, DEBUG_ALIAS)


def _run(command: list[str], what: str, env: Mapping[str, str]) -> str:
    """Runs one tool (an argument list: no shell) in `env`; its failure is one error with the end of what it said."""
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False)
    except OSError as err:
        raise PrunedroidError(f"{what} could not start: {err.strerror} ({command[0]})") from None
    except subprocess.TimeoutExpired:
        raise PrunedroidError(f"{what} ran past {TOOL_TIMEOUT_S} s") from None
    if result.returncode != 0:
        said = (result.stderr + result.stdout).strip().splitlines()
        raise PrunedroidError(f"{what} failed (exit {result.returncode}): {' | '.join(said[-8:])[:1500]}")
    return result.stdout + result.stderr


def _manifest(app_dir: Path, app: GradleApp, out: Path) -> Path:
    """The app's manifest with what the Android Gradle Plugin merges in: the package (applicationId) and native
    libraries loaded from the APK itself (extractNativeLibs false, as AGP sets for stored libraries)."""
    text = (app_dir / "app" / "src" / "main" / "AndroidManifest.xml").read_text()
    text = text.replace("<manifest ", f'<manifest package="{app.application_id}" ', 1)
    text = text.replace("<application", '<application android:extractNativeLibs="false"', 1)
    out.write_text(text)
    return out


def _link_resources(app_dir: Path, app: GradleApp, tools: Tools, debug: bool, work: Path) -> Path:
    """aapt2 compile + link: work/resources.apk (manifest, resources.arsc, res/) and R.java under work/gen."""
    compiled = work / "resources.zip"
    _run([tools.aapt2, "compile", "--dir", str(app_dir / "app" / "src" / "main" / "res"), "-o", str(compiled)],
         "aapt2 compile", tools.env)
    linked = work / "resources.apk"
    stamp = (["--compile-sdk-version-code", str(app.compile_sdk), "--compile-sdk-version-name",
              str(app.compile_sdk - 20)] if tools.compile_sdk_stamp else [])  # API 35 is Android 15, 34 is 14, ...
    _run([tools.aapt2, "link", "-o", str(linked), "-I", str(tools.framework_resources),
          "--manifest", str(_manifest(app_dir, app, work / "AndroidManifest.xml")), "--java", str(work / "gen"),
          "--min-sdk-version", str(app.min_sdk), "--target-sdk-version", str(app.target_sdk),
          "--version-code", str(app.version_code), "--version-name", app.version_name, *stamp,
          *(["--debug-mode"] if debug else []), str(compiled)], "aapt2 link", tools.env)
    return linked


def write_build_config(app: GradleApp, flavor: str, debug: bool, gen: Path) -> Path:
    """BuildConfig.java with the fields the Android Gradle Plugin writes and build.gradle's buildConfigField ones."""
    package = gen / Path(*app.namespace.split("."))
    package.mkdir(parents=True, exist_ok=True)
    standard = {"boolean DEBUG": str(debug).lower(), "String APPLICATION_ID": f'"{app.application_id}"',
                "String BUILD_TYPE": f'"{"debug" if debug else "release"}"', "String FLAVOR": f'"{flavor}"',
                "int VERSION_CODE": str(app.version_code), "String VERSION_NAME": f'"{app.version_name}"'}
    fields = {**standard, **{f"String {name}": f'"{value}"' for name, value in app.build_config.items()}}
    body = "".join(f"  public static final {field} = {value};\n" for field, value in fields.items())
    path = package / "BuildConfig.java"
    path.write_text(f"package {app.namespace};\n\npublic final class BuildConfig {{\n{body}}}\n")
    return path


def _jar(classes: Path, out: Path) -> Path:
    """The compiled classes as one jar, for D8."""
    with zipfile.ZipFile(out, "w") as jar:
        for path in sorted(classes.rglob("*.class")):
            jar.write(path, path.relative_to(classes).as_posix())
    return out


def _runtime(artifacts: list[Path], library: str, work: Path) -> tuple[Path, list[Path]]:
    """(the runtime's AAR, every jar its classes live in: the AAR's classes.jar and its dependencies' jars)."""
    aar = artifacts[0]
    try:
        with zipfile.ZipFile(aar) as zipped:
            classes = work / f"{aar.stem}-classes.jar"
            classes.write_bytes(zipped.read("classes.jar"))
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        raise PrunedroidError(f"{aar} (Maven's copy of {library}) is not a readable AAR ({err}): delete "
                              f"{aar.parent} and build again, and Maven downloads it anew") from None
    return aar, [classes, *(path for path in artifacts[1:] if path.suffix == ".jar")]


def native_entries(aar: Path, abis: tuple[str, ...]) -> list[Entry]:
    """The AAR's jni/<abi>/*.so for each ABI asked, as stored APK entries lib/<abi>/*.so; an ABI the AAR does not
    ship is refused, naming those it does."""
    with zipfile.ZipFile(aar) as zipped:
        shipped = {name.split("/")[1] for name in zipped.namelist() if re.match(r"^jni/[\w-]+/[^/]+\.so$", name)}
        absent = [abi for abi in abis if abi not in shipped]
        if absent:
            raise PrunedroidError(f"--abi {','.join(absent)}: {aar.name} ships native code for "
                                  f"{', '.join(sorted(shipped))} only; choose among them")
        return [Entry("lib/" + name[len("jni/"):], zipped.read(name), stored=True) for name in sorted(zipped.namelist())
                if re.match(r"^jni/[\w-]+/[^/]+\.so$", name) and name.split("/")[1] in abis]


def asset_entries(assets: Path, no_compress: tuple[str, ...]) -> list[Entry]:
    """assets/**: build.gradle's noCompress suffixes (the model) and PNGs (compressed already) stored, the rest
    deflated."""
    stored = {*(f".{suffix}" for suffix in no_compress), ".png"}
    return [Entry(f"assets/{path.relative_to(assets).as_posix()}", path.read_bytes(), path.suffix in stored)
            for path in sorted(assets.rglob("*")) if path.is_file()]


@dataclass(frozen=True)
class Request:
    """One APK: the app, its runtime flavor, debug or release, the ABIs packaged, and where it goes."""

    app_dir: Path
    app: GradleApp
    flavor: str
    debug: bool
    abis: tuple[str, ...]
    assets: Path
    apk: Path


def build(request: Request, tools: Tools, signing: Signing,
          check_runtime: Callable[[Path], None] | None = None) -> Path:
    """Builds, signs and verifies request.apk; the APK appears whole or not at all (written beside it, renamed).
    `check_runtime` is called with the runtime's AAR once Maven has it, before anything is compiled."""
    app, flavor = request.app, request.flavor
    work = request.app_dir / "app" / "build" / "direct" / f"{flavor}-{'debug' if request.debug else 'release'}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "gen").mkdir(parents=True)
    library = app.runtime_library[flavor]
    try:
        artifacts = maven.resolve([f"{library}:aar"], work / "maven", tools.mvn, tools.env)
    except maven.NotServed as err:
        others = [f"--runtime {other}" for other in app.runtime_library if other != flavor]
        raise PrunedroidError(f"{err} - the {flavor} flavor's runtime, so its APK cannot be built here"
                              f"{'; ' + ' or '.join(others) + ' can still be built' if others else ''}") from None
    aar, runtime_jars = _runtime(artifacts, library, work)
    libraries = native_entries(aar, request.abis)
    if check_runtime is not None:
        check_runtime(aar)
    tool_jars = maven.resolve([D8, *([] if tools.android_jar else [ANDROID_ALL[app.compile_sdk]])],
                              work / "maven-tools", tools.mvn, tools.env, transitive=False)
    d8_jar, android_jar = tool_jars[0], tools.android_jar or tool_jars[1]
    resources = _link_resources(request.app_dir, app, tools, request.debug, work)
    sources = [*sorted((request.app_dir / "app" / "src" / "main" / "java").rglob("*.java")),
               *sorted((request.app_dir / "app" / "src" / flavor / "java").rglob("*.java")),
               *sorted((work / "gen").rglob("R.java")), write_build_config(app, flavor, request.debug, work / "gen")]
    classes = work / "classes"
    _run([tools.javac, "--release", str(MIN_JDK), "-nowarn", "-encoding", "UTF-8", "-cp",
          os.pathsep.join(map(str, [android_jar, *runtime_jars])), "-d", str(classes), *map(str, sources)], "javac",
         tools.env)
    dex = work / "dex"
    dex.mkdir()
    _run([tools.java, "-cp", str(d8_jar), "com.android.tools.r8.D8", "--debug" if request.debug else "--release",
          "--min-api", str(app.min_sdk), "--lib", str(android_jar), "--output", str(dex),
          str(_jar(classes, work / "app-classes.jar")), *map(str, runtime_jars)], "D8", tools.env)
    dexes = [Entry(path.name, path.read_bytes(), stored=False) for path in sorted(dex.glob("classes*.dex"))]
    unsigned = work / "unsigned.apk"
    write_apk([*entries_of(resources), *dexes, *asset_entries(request.assets, app.no_compress), *libraries], unsigned)
    request.apk.parent.mkdir(parents=True, exist_ok=True)
    signed = request.apk.with_name(f".{request.apk.name}.partial")
    try:
        _run([tools.apksigner, "sign", *signing.apksigner_options(), "--v1-signing-enabled", "false",
              "--v4-signing-enabled", "false",
              "--out", str(signed), str(unsigned)], "apksigner sign", tools.env)
        _run([tools.apksigner, "verify", str(signed)], "apksigner verify", tools.env)
        os.replace(signed, request.apk)
    finally:
        signed.unlink(missing_ok=True)
    return request.apk
