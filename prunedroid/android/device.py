"""On-device latency over adb: install the demo app, copy each exported .ptl and .pte onto the phone or emulator,
start the app's BenchmarkActivity for it, pull the JSON it writes, and clean up.

Only adb's documented command-line behaviour is relied on (`adb devices -l`, `install -r`, `push`, `shell am start
-W`, `shell run-as`, `exec-out`, `logcat -d`, `shell getprop`). `run-as` needs a debuggable app: the debug APK.
`adb shell` hands the device's sh one line, its arguments joined by spaces: every word is quoted (Adb.shell), and
only files checked against their sidecar are pushed.
"""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prunedroid.android.build import PACKAGE
from prunedroid.deploy.sidecar import Sidecar, unique_names
from prunedroid.errors import PrunedroidError
from prunedroid.measure.latency import RUNTIMES, read_table, write_layer_pte, write_table
from prunedroid.options import MAX_THREADS, is_finite_number
from prunedroid.pruning.groups import LayerShape

ACTIVITY = f"{PACKAGE}/.BenchmarkActivity"
STAGING = "/data/local/tmp/prunedroid"  # adb may write here; the app copies from it with run-as
LOG_TAG = "prunedroid-bench"


@dataclass(frozen=True)
class Device:
    serial: str
    state: str  # "device" when usable; "unauthorized", "offline", ...
    description: str


def parse_devices(output: str) -> list[Device]:
    """`adb devices -l` output -> devices. Lines after the header are '<serial> <state> key:value ...'; the state
    "no permissions" is two words, followed by adb's hint in parentheses."""
    devices = []
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith(("List of devices", "*")):
            if parts[1:3] == ["no", "permissions"]:
                devices.append(Device(parts[0], "no permissions", " ".join(parts[3:])))
            else:
                devices.append(Device(parts[0], parts[1], " ".join(parts[2:])))
    return devices


# What to do about a device adb lists but cannot run apps on, by its state.
_STATE_ADVICE = {
    "unauthorized": "has not authorised this computer: unlock it and accept the 'Allow USB debugging?' prompt (or "
                    "revoke the authorisations in Developer options and reconnect it), then retry",
    "no permissions": "is attached, but this user cannot open it: add a udev rule for it (Debian: apt-get install "
                      "android-sdk-platform-tools-common) and add yourself to the plugdev group, then reconnect it",
    "host": "is host: adb reached a host (another adb server, or a device in USB host mode), not a phone this "
            "computer can run apps on; connect the phone itself",
    "offline": "is offline: re-plug it or restart adb (`adb kill-server`)",
}
_NOT_BOOTED = ("recovery", "rescue", "sideload", "bootloader", "fastbootd")


def pick_device(devices: Sequence[Device], serial: str | None,
                env: Mapping[str, str] | None = None) -> Device:
    """The device to use: the one named (by `serial`, else by $ANDROID_SERIAL in `env`, as adb itself reads it),
    or the only one attached; else an error saying what to do."""
    serial = serial or (os.environ if env is None else env).get("ANDROID_SERIAL") or None
    if serial:
        named = [d for d in devices if d.serial == serial]
        if not named:
            raise PrunedroidError(f"no device {serial!r} attached (attached: "
                                  f"{', '.join(d.serial for d in devices) or 'none'}); check `adb devices -l`")
        devices = named
    if not devices:
        raise PrunedroidError("no Android device or emulator attached: connect a phone with USB debugging on "
                              "(Settings > Developer options) or start an emulator (`emulator -avd <name>`), then "
                              "check `adb devices -l`")
    if len(devices) > 1:
        raise PrunedroidError(f"{len(devices)} devices attached ({', '.join(d.serial for d in devices)}); "
                              f"pass --serial <one of them>")
    device = devices[0]
    if device.state in _NOT_BOOTED:
        raise PrunedroidError(f"{device.serial} is in {device.state}: reboot it into Android (`adb -s {device.serial} "
                              f"reboot`), unlock it, then retry")
    if device.state != "device":
        raise PrunedroidError(f"{device.serial} " + _STATE_ADVICE.get(
            device.state, f"is {device.state}: re-plug it or restart adb (`adb kill-server`)"))
    return device


def find_adb(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    for sdk in (env.get("ANDROID_HOME"), env.get("ANDROID_SDK_ROOT")):
        if sdk and (Path(sdk) / "platform-tools" / "adb").is_file():
            return str(Path(sdk) / "platform-tools" / "adb")
    found = shutil.which("adb", path=env.get("PATH", ""))
    if not found:
        raise PrunedroidError("adb not found: install the Android SDK platform-tools "
                              "(https://developer.android.com/tools/releases/platform-tools) and put adb on PATH, or "
                              "set ANDROID_HOME to an SDK that has them")
    return found


@dataclass
class Adb:
    adb: str
    serial: str | None = None
    env: Mapping[str, str] | None = None

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        command = [self.adb, *(["-s", self.serial] if self.serial else []), *args]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                                    env=None if self.env is None else dict(self.env))
        except subprocess.TimeoutExpired:
            raise PrunedroidError(f"`{shlex.join(command)}` did not finish in {timeout:.0f} s") from None
        if check and result.returncode != 0:
            raise PrunedroidError(f"`{shlex.join(command)}` failed (exit {result.returncode}): "
                                  f"{(result.stderr or result.stdout).strip()[-800:]}")
        return result

    def shell(self, *words: str, check: bool = True, out: bool = False) -> subprocess.CompletedProcess:
        """One command line run by the device's shell (`adb shell`, or `adb exec-out` for output kept byte for
        byte). adb joins its arguments with spaces into a single line for the device's sh, so each word is quoted
        here: a file name can never become a second command."""
        return self.run("exec-out" if out else "shell", shlex.join(words), check=check)


def device_info(adb: Adb) -> dict:
    props = {"model": "ro.product.model", "manufacturer": "ro.product.manufacturer", "abi": "ro.product.cpu.abi",
             "android": "ro.build.version.release", "sdk": "ro.build.version.sdk"}
    return {key: adb.shell("getprop", prop).stdout.strip() for key, prop in props.items()}


def install(adb: Adb, apk: Path) -> None:
    """`adb install -r`; adb prints 'Success' on success and 'Failure [REASON]' (exit 1) otherwise."""
    if not apk.is_file():
        raise PrunedroidError(f"no APK at {apk}; build it first with `invoke build-apk` (the debug variant)")
    result = adb.run("install", "-r", str(apk), timeout=300, check=False)
    if result.returncode != 0 or "Success" not in result.stdout:
        raise PrunedroidError(f"installing {apk.name} failed: {(result.stderr + result.stdout).strip()[-800:]}"
                              + ("\nuninstall the old build first: adb uninstall " + PACKAGE
                               if "INSTALL_FAILED_UPDATE_INCOMPATIBLE" in result.stderr + result.stdout else ""))


def crash_lines(adb: Adb) -> str:
    """The app's benchmark log and any crash (AndroidRuntime errors) since the log was cleared."""
    log = adb.run("logcat", "-d", "-s", f"{LOG_TAG}:V", "AndroidRuntime:E", check=False).stdout
    return "\n".join(log.strip().splitlines()[-30:]) or "(logcat has nothing from the app)"


DEVICE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")


def device_name(sidecar_path: Path) -> str:
    """The model's name on the phone (its files and the result's), the sidecar's stem: letters, digits and . _ -
    only, so it is the same word in adb, the device's shell, the app's intent extras and its files folder."""
    if not DEVICE_NAME.fullmatch(sidecar_path.stem):
        raise PrunedroidError(f"{sidecar_path}: a model's name on the phone is its sidecar's file name, which may hold "
                              f"letters, digits and . _ - only; export it under such a --name")
    return sidecar_path.stem


def _is_ms(value: object) -> bool:
    return is_finite_number(value) and 0 < value < 3.6e6  # type: ignore[operator]


def read_result(text: str, name: str, runs: int) -> dict:
    """The JSON BenchmarkActivity wrote for `name`, checked: latencies finite and above 0 ms, a size in bytes and
    the number of runs asked for; else an error (an older app, or a broken result)."""
    try:
        result = json.loads(text, parse_constant=lambda constant: math.nan)
    except (ValueError, RecursionError):
        raise PrunedroidError(f"the app's result for {name} is not JSON: {text.strip()[:200]!r}; rebuild and reinstall "
                              f"the app (`invoke build-apk`)") from None
    if isinstance(result, dict) and "error" in result:
        raise PrunedroidError(f"the app could not benchmark {name}: {' '.join(str(result['error']).split())[:500]}")
    latency = result.get("latency_ms") if isinstance(result, dict) else None
    if not isinstance(latency, dict) or not all(_is_ms(latency.get(key)) for key in ("median", "p90", "min", "max")) \
            or type(result.get("model_bytes")) is not int or result["model_bytes"] < 1 or result.get("runs") != runs \
            or type(result.get("threads")) is not int:
        raise PrunedroidError(f"the app's result for {name} is not what this version writes (latencies in ms above 0, "
                              f"the model's size, {runs} runs; is an older APK installed? rebuild with `invoke "
                              f"build-apk`): {json.dumps(result)[:500]}")
    return result


# What `cat` says of a result the app has not written yet. adb clients from before Android 7's shell protocol pass it
# on stdout with exit status 0, so a poll must not take it for the result.
NOT_WRITTEN = re.compile(r"^cat: \S+: No such file or directory$")


def result_ready(returncode: int, output: str) -> bool:
    """Whether a poll's `cat` of the result file read the result: exit 0 and some text other than cat's own 'No such
    file' line."""
    text = output.strip()
    return returncode == 0 and bool(text) and not NOT_WRITTEN.match(text)


def benchmark_model(adb: Adb, model: Path, sidecar: Path, name: str, warmup: int, runs: int, threads: int,
                    timeout: float = 300) -> dict:
    """Copies `model` (.pte or .ptl: the app picks the runtime by extension) and its `sidecar` (the input shape) into
    the app's files, runs BenchmarkActivity on them, returns its JSON; removes what it copied."""
    files = {f"{name}{model.suffix}": model, f"{name}.json": sidecar}
    adb.shell("mkdir", "-p", STAGING)
    for target, source in files.items():
        adb.run("push", str(source), f"{STAGING}/{target}", timeout=300)
    try:
        adb.shell("run-as", PACKAGE, "mkdir", "-p", "files/bench")  # a fresh install has no files/ folder yet
        for target in files:
            adb.shell("run-as", PACKAGE, "cp", f"{STAGING}/{target}", f"files/{target}")
        adb.shell("run-as", PACKAGE, "rm", "-f", f"files/bench/{name}.json")
        adb.run("logcat", "-c")
        started = adb.shell("am", "start", "-W", "-n", ACTIVITY, "--es", "model", f"{name}{model.suffix}",
                            "--es", "sidecar", f"{name}.json", "--es", "out", name, "--ei", "warmup", str(warmup),
                            "--ei", "runs", str(runs), "--ei", "threads", str(threads))
        if "Error" in started.stdout or "Status: ok" not in started.stdout:
            raise PrunedroidError(f"could not start {ACTIVITY}: {started.stdout.strip()[-500:]}\n"
                                  f"is the app installed? `invoke bench-device` installs it from --apk")
        deadline = time.monotonic() + timeout
        while True:
            read = adb.shell("run-as", PACKAGE, "cat", f"files/bench/{name}.json", check=False, out=True)
            if result_ready(read.returncode, read.stdout):
                break
            if time.monotonic() > deadline:
                adb.shell("am", "force-stop", PACKAGE, check=False)  # its benchmark would keep the phone busy
                raise PrunedroidError(f"no result for {name} after {timeout:.0f} s, so the app's benchmark was stopped "
                                      f"(a slow model needs a longer --timeout); the app's log:\n{crash_lines(adb)}")
            time.sleep(1)
        try:
            return read_result(read.stdout, name, runs)
        except PrunedroidError as error:
            raise PrunedroidError(f"{error}\n{crash_lines(adb)}") from None
    finally:
        adb.shell("run-as", PACKAGE, "rm", "-rf", *(f"files/{target}" for target in files),
                  f"files/bench/{name}.json", check=False)
        adb.shell("rm", "-rf", STAGING, check=False)


def check_device_timing(warmup: int, runs: int, threads: int, timeout: float) -> None:
    if warmup < 0 or runs < 1 or not 1 <= threads <= MAX_THREADS or timeout < 1:
        raise PrunedroidError(f"need --warmup >= 0, --runs >= 1, --threads in 1..{MAX_THREADS} and --timeout >= 1 "
                              f"second")


def bench_device(sidecars: Sequence[Path], apks: Mapping[str, Path], serial: str | None = None, warmup: int = 20,
                 runs: int = 100, threads: int = 1, env: Mapping[str, str] | None = None, timeout: float = 300) -> dict:
    """Benchmarks each exported model (sidecar JSON) on one device, in each runtime `apks` names an APK for
    ("executorch": the .pte on the executorch flavor, "lite": the .ptl on the lite flavor; one runtime per APK, each
    installed before its models run); the device's own description and one result per runtime and model ("models":
    {"lite"|"executorch": {name: result}}, latencies in ms, model size in bytes). timeout: seconds to wait for each
    result."""
    check_device_timing(warmup, runs, threads, timeout)
    unknown = set(apks) - set(DEVICE_KINDS)
    if unknown or not apks:
        raise PrunedroidError(f"an APK per runtime, of {', '.join(DEVICE_KINDS)}; got {', '.join(apks) or 'none'}")
    paths = [Path(p) for p in sidecars]
    unique_names(paths)
    models: dict[str, dict[str, tuple[Path, Path]]] = {}  # runtime -> model name -> (model file, sidecar)
    for sidecar_path in paths:
        name, sidecar = device_name(sidecar_path), Sidecar.read(sidecar_path)
        for runtime in apks:
            kind = DEVICE_KINDS[runtime]
            if kind in sidecar.files:  # a sidecar from before ExecuTorch support names no .pte
                models.setdefault(runtime, {})[name] = (sidecar.model_file(kind), sidecar_path)
    for runtime, apk in apks.items():
        if not apk.is_file():  # before the phone is touched
            raise PrunedroidError(f"no APK at {apk}; build it first with `invoke build-apk --runtime {runtime}` "
                                  f"(the debug variant)")
    adb = connect(serial, env)
    results = {}
    for runtime, named in models.items():
        install(adb, apks[runtime])
        results[runtime] = {name: benchmark_model(adb, model, sidecar, name, warmup, runs, threads, timeout)
                            for name, (model, sidecar) in named.items()}
    return {"serial": adb.serial, "device": device_info(adb), "warmup": warmup, "runs": runs, "threads": threads,
            "models": results}


DEVICE_KINDS = {"executorch": "pte", "lite": "ptl"}  # each flavor's runtime and the file it runs


def connect(serial: str | None, env: Mapping[str, str] | None) -> Adb:
    """adb on the one device to use (named by `serial`, or the only one attached)."""
    adb_path = find_adb(env)
    listed = Adb(adb_path, env=env).run("devices", "-l").stdout
    return Adb(adb_path, pick_device(parse_devices(listed), serial, env).serial, env)


DEVICE_RUNTIMES = ("executorch", "executorch-int8")  # the .pte programs the app's benchmark runs


def device_latency_table(shapes: Sequence[LayerShape], out: Path, apk: Path, runtime: str = "executorch",
                         serial: str | None = None, warmup: int = 10, runs: int = 50, threads: int = 1,
                         env: Mapping[str, str] | None = None, timeout: float = 300,
                         progress: Callable[[str], None] | None = None) -> dict:
    """Times each layer shape on the phone - an ExecuTorch program per shape (`runtime`: XNNPACK fp32 or int8, as
    latency.write_layer_pte writes it), run by the app's BenchmarkActivity (`warmup` untimed runs, the median of
    `runs`, `threads` threads) - into the latency table at `out`, saved after every shape. A table already at `out`
    is resumed when it was measured on this device with this runtime and threads (a dropped connection loses one
    shape at most); otherwise refused. Returns the table as written: {"where", "ms"}."""
    if runtime not in DEVICE_RUNTIMES:
        raise PrunedroidError(f"the app times .pte programs: --latency-runtime is one of {', '.join(DEVICE_RUNTIMES)} "
                              f"with --device, not {runtime!r}")
    check_device_timing(warmup, runs, threads, timeout)
    adb = connect(serial, env)
    where = {"runtime": f"{RUNTIMES[runtime].version()} on Android", "threads": threads, "warmup": warmup,
             "runs": runs, "device": {"serial": adb.serial, **device_info(adb)}}
    ms: dict[str, float] = {}
    if out.exists():
        ms, stored = read_table(out)
        if stored != where:
            raise PrunedroidError(f"{out} holds timings from {json.dumps(stored)[:300]}, not from {json.dumps(where)}; "
                                  f"give another --out to measure this device and runtime")
    install(adb, apk)
    missing = [shape for shape in shapes if shape.key not in ms]
    total = len(ms) + len(missing)
    with tempfile.TemporaryDirectory() as scratch:
        model, sidecar = Path(scratch) / "layer.pte", Path(scratch) / "layer.json"
        for shape in missing:
            example = write_layer_pte(shape, model, int8=runtime == "executorch-int8")
            sidecar.write_text(json.dumps({"input_shape": list(example.shape)}))
            result = benchmark_model(adb, model, sidecar, "prunedroid-layer", warmup, runs, threads, timeout)
            ms[shape.key] = float(result["latency_ms"]["median"])
            write_table(out, where, ms)
            if progress:
                progress(f"{len(ms)}/{total} shapes: {shape.key} {ms[shape.key]:.4f} ms")
    if not out.exists():  # every shape was already there: nothing new, but the table is the answer
        write_table(out, where, ms)
    return {"where": where, "ms": ms}
