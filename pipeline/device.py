"""On-device latency over adb: install the demo app, copy each exported .ptl onto the phone or emulator, start the
app's BenchmarkActivity for it, pull the JSON it writes, and clean up.

Only adb's documented command-line behaviour is relied on (`adb devices -l`, `install -r`, `push`, `shell am start
-W`, `shell run-as`, `exec-out`, `logcat -d`, `shell getprop`). `run-as` needs a debuggable app: the debug APK.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.android import PACKAGE
from pipeline.errors import PipelineError
from pipeline.export import read_sidecar

ACTIVITY = f"{PACKAGE}/.BenchmarkActivity"
STAGING = "/data/local/tmp/prunedroid"  # adb may write here; the app copies from it with run-as
LOG_TAG = "prunedroid-bench"


@dataclass(frozen=True)
class Device:
    serial: str
    state: str  # "device" when usable; "unauthorized", "offline", ...
    description: str


def parse_devices(output: str) -> list[Device]:
    """`adb devices -l` output -> devices. Lines after the header are '<serial> <state> key:value ...'."""
    devices = []
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith(("List of devices", "*")):
            devices.append(Device(parts[0], parts[1], " ".join(parts[2:])))
    return devices


def pick_device(devices: Sequence[Device], serial: str | None) -> Device:
    """The device to use: the one named, or the only one attached; else an error saying what to do."""
    if serial:
        named = [d for d in devices if d.serial == serial]
        if not named:
            raise PipelineError(f"no device {serial!r} attached (attached: "
                                f"{', '.join(d.serial for d in devices) or 'none'}); check `adb devices -l`")
        devices = named
    if not devices:
        raise PipelineError("no Android device or emulator attached: connect a phone with USB debugging on "
                            "(Settings > Developer options) or start an emulator (`emulator -avd <name>`), then "
                            "check `adb devices -l`")
    if len(devices) > 1:
        raise PipelineError(f"{len(devices)} devices attached ({', '.join(d.serial for d in devices)}); "
                            f"pass --serial <one of them>")
    device = devices[0]
    if device.state == "unauthorized":
        raise PipelineError(f"{device.serial} has not authorised this computer: unlock it and accept the 'Allow USB "
                            f"debugging?' prompt (or revoke and re-plug), then retry")
    if device.state != "device":
        raise PipelineError(f"{device.serial} is {device.state}: re-plug it or restart adb (`adb kill-server`)")
    return device


def find_adb(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    for sdk in (env.get("ANDROID_HOME"), env.get("ANDROID_SDK_ROOT")):
        if sdk and (Path(sdk) / "platform-tools" / "adb").is_file():
            return str(Path(sdk) / "platform-tools" / "adb")
    found = shutil.which("adb", path=env.get("PATH", ""))
    if not found:
        raise PipelineError("adb not found: install the Android SDK platform-tools "
                            "(https://developer.android.com/tools/releases/platform-tools) and put adb on PATH, or set "
                            "ANDROID_HOME to an SDK that has them")
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
            raise PipelineError(f"`{' '.join(command)}` did not finish in {timeout:.0f} s") from None
        if check and result.returncode != 0:
            raise PipelineError(f"`{' '.join(command)}` failed (exit {result.returncode}): "
                                f"{(result.stderr or result.stdout).strip()[-800:]}")
        return result


def device_info(adb: Adb) -> dict:
    props = {"model": "ro.product.model", "manufacturer": "ro.product.manufacturer", "abi": "ro.product.cpu.abi",
             "android": "ro.build.version.release", "sdk": "ro.build.version.sdk"}
    return {key: adb.run("shell", "getprop", prop).stdout.strip() for key, prop in props.items()}


def install(adb: Adb, apk: Path) -> None:
    """`adb install -r`; adb prints 'Success' on success and 'Failure [REASON]' (exit 1) otherwise."""
    if not apk.is_file():
        raise PipelineError(f"no APK at {apk}; build it first with `invoke build-apk` (the debug variant)")
    result = adb.run("install", "-r", str(apk), timeout=300, check=False)
    if result.returncode != 0 or "Success" not in result.stdout:
        raise PipelineError(f"installing {apk.name} failed: {(result.stderr + result.stdout).strip()[-800:]}"
                            + ("\nuninstall the old build first: adb uninstall " + PACKAGE
                               if "INSTALL_FAILED_UPDATE_INCOMPATIBLE" in result.stderr + result.stdout else ""))


def crash_lines(adb: Adb) -> str:
    """The app's benchmark log and any crash (AndroidRuntime errors) since the log was cleared."""
    log = adb.run("logcat", "-d", "-s", f"{LOG_TAG}:V", "AndroidRuntime:E", check=False).stdout
    return "\n".join(log.strip().splitlines()[-30:]) or "(logcat has nothing from the app)"


def benchmark_model(adb: Adb, model: Path, sidecar: Path, name: str, warmup: int, runs: int, threads: int,
                    timeout: float = 300) -> dict:
    """Copies `model` (.pte or .ptl: the app picks the runtime by extension) and its `sidecar` (the input shape) into
    the app's files, runs BenchmarkActivity on them, returns its JSON; removes what it copied."""
    files = {f"{name}{model.suffix}": model, f"{name}.json": sidecar}
    adb.run("shell", "mkdir", "-p", STAGING)
    for target, source in files.items():
        adb.run("push", str(source), f"{STAGING}/{target}", timeout=300)
    try:
        for target in files:
            adb.run("shell", "run-as", PACKAGE, "cp", f"{STAGING}/{target}", f"files/{target}")
        adb.run("shell", "run-as", PACKAGE, "rm", "-f", f"files/bench/{name}.json")
        adb.run("logcat", "-c")
        started = adb.run("shell", "am", "start", "-W", "-n", ACTIVITY, "--es", "model", f"{name}{model.suffix}",
                          "--es", "sidecar", f"{name}.json", "--es", "out", name, "--ei", "warmup", str(warmup),
                          "--ei", "runs", str(runs), "--ei", "threads", str(threads))
        if "Error" in started.stdout or "Status: ok" not in started.stdout:
            raise PipelineError(f"could not start {ACTIVITY}: {started.stdout.strip()[-500:]}\n"
                                f"is the app installed? `invoke bench-device` installs it from --apk")
        deadline = time.monotonic() + timeout
        while True:
            read = adb.run("exec-out", "run-as", PACKAGE, "cat", f"files/bench/{name}.json", check=False)
            if read.returncode == 0 and read.stdout.strip():
                result = json.loads(read.stdout)
                break
            if time.monotonic() > deadline:
                raise PipelineError(f"no result for {name} after {timeout:.0f} s; the app's log:\n{crash_lines(adb)}")
            time.sleep(1)
        if "error" in result:
            raise PipelineError(f"the app could not benchmark {name}: {result['error']}\n{crash_lines(adb)}")
        latency = result.get("latency_ms", {})
        if not all(isinstance(latency.get(key), (int, float)) for key in ("median", "p90", "min", "max")) \
                or not isinstance(result.get("model_bytes"), int) or result.get("runs") != runs:
            raise PipelineError(f"the app's result for {name} is not what this version writes (is an older APK "
                                f"installed? rebuild with `invoke build-apk`): {json.dumps(result)[:500]}")
        return result
    finally:
        adb.run("shell", "run-as", PACKAGE, "rm", "-rf", *(f"files/{target}" for target in files),
                f"files/bench/{name}.json", check=False)
        adb.run("shell", "rm", "-rf", STAGING, check=False)


def bench_device(sidecars: Sequence[Path], apk: Path, serial: str | None = None, warmup: int = 20, runs: int = 100,
                 threads: int = 1, env: Mapping[str, str] | None = None, timeout: float = 300) -> dict:
    """Installs `apk` and benchmarks each exported model (sidecar JSON) on one device, its .ptl on PyTorch Mobile
    lite and its .pte on ExecuTorch; the device's own description and one result per runtime and model ("models":
    {"lite"|"executorch": {name: result}}, latencies in ms, model size in bytes). timeout: seconds to wait for each
    result."""
    if warmup < 0 or runs < 1 or threads < 1:
        raise PipelineError("need --warmup >= 0, --runs >= 1 and --threads >= 1")
    models = {}  # runtime -> model name -> (model file, sidecar)
    for sidecar_path in map(Path, sidecars):
        sidecar = read_sidecar(sidecar_path)
        for runtime, kind in (("lite", "ptl"), ("executorch", "pte")):
            if kind in sidecar:  # a sidecar from before ExecuTorch support names no .pte
                models.setdefault(runtime, {})[sidecar_path.stem] = (sidecar_path.parent / sidecar[kind], sidecar_path)
    adb_path = find_adb(env)
    listed = Adb(adb_path, env=env).run("devices", "-l").stdout
    device = pick_device(parse_devices(listed), serial)
    adb = Adb(adb_path, device.serial, env)
    install(adb, apk)
    results = {runtime: {name: benchmark_model(adb, model, sidecar, name, warmup, runs, threads, timeout)
                         for name, (model, sidecar) in named.items()} for runtime, named in models.items()}
    return {"serial": device.serial, "device": device_info(adb), "warmup": warmup, "runs": runs, "threads": threads,
            "models": results}
