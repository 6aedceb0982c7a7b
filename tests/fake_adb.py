"""A stand-in for `adb` with one simulated phone, for tests: it prints what adb and the device print (formats
copied from real sessions: `adb devices -l`, install, push, `am start -W`, run-as, getprop, logcat) and keeps the
device's files under $FAKE_ADB_STATE. Starting BenchmarkActivity does what the app does: write
files/bench/<out>.json and a log line - or, with $FAKE_ADB_CRASH, crash with a stack trace in logcat.

$FAKE_ADB_DEVICES: the device lines of `adb devices -l`, ';'-separated. $FAKE_ADB_INSTALL_FAIL: install fails.
"""
import json
import os
import shutil
import sys
from pathlib import Path

PACKAGE = "org.prunedroid.demo"
STATE = Path(os.environ["FAKE_ADB_STATE"])
ROOT, APP = STATE / "fs", STATE / "app"  # the device's file system; the app's private data folder
LOG = STATE / "logcat"
PROPS = {"ro.product.model": "Pixel 7", "ro.product.manufacturer": "Google", "ro.product.cpu.abi": "arm64-v8a",
         "ro.build.version.release": "14", "ro.build.version.sdk": "34"}


def fail(message: str, code: int = 1) -> None:
    print(message, file=sys.stderr)
    sys.exit(code)


def on_device(path: str, base: Path = ROOT) -> Path:
    return base / path.lstrip("/")


def start_benchmark(extras: dict) -> None:
    print(f"Starting: Intent {{ cmp={PACKAGE}/.BenchmarkActivity (has extras) }}")
    print("Status: ok\nLaunchState: COLD\nActivity: org.prunedroid.demo/.BenchmarkActivity\nTotalTime: 412\n"
          "WaitTime: 415\nComplete")
    model = on_device("files/" + extras["model"], APP)
    sidecar = on_device("files/" + extras.get("sidecar", ""), APP)
    if os.environ.get("FAKE_ADB_CRASH"):
        with LOG.open("a") as log:
            log.write("E AndroidRuntime: FATAL EXCEPTION: benchmark\nE AndroidRuntime: Process: org.prunedroid.demo, "
                      "PID: 4242\nE AndroidRuntime: java.lang.UnsatisfiedLinkError: dlopen failed: library "
                      "\"libpytorch_jni.so\" not found\n")
        return
    out = on_device(f"files/bench/{extras['out']}.json", APP)
    out.parent.mkdir(parents=True, exist_ok=True)
    if "sidecar" not in extras or not sidecar.is_file():  # what BenchmarkActivity writes when an extra is missing
        out.write_text(json.dumps({"error": "java.lang.IllegalArgumentException: need --es model <file>, --es "
                                            "sidecar <file>, runs >= 1, warmup >= 0, threads >= 1"}))
        return
    size = model.stat().st_size
    median = size / 1e5
    result = {"model": model.name, "model_bytes": size, "load_ms": 12.0, "runs": int(extras["runs"]),
              "warmup": int(extras["warmup"]), "threads": int(extras["threads"]),
              "latency_ms": {"median": median, "p90": 1.1 * median, "min": 0.9 * median, "max": 1.5 * median},
              "device": {"manufacturer": "Google", "model": "Pixel 7", "abi": "arm64-v8a", "android": "14",
                         "sdk": 34},
              "runtime": "executorch-android 1.5.1" if model.suffix == ".pte" else "pytorch_android_lite 1.13.1",
              "summary": f"{model.name}: ok"}
    if os.environ.get("FAKE_ADB_OLD_APP"):  # an APK from before latencies were reported
        result = {"model": model.name, "time_ms": median}
    out.write_text(json.dumps(result))
    with LOG.open("a") as log:
        log.write(f"I prunedroid-bench: {result.get('summary', model.name)}\n")


def shell(args: list[str]) -> None:
    if args[0] == "getprop":
        print(PROPS.get(args[1], ""))
    elif args[0] == "mkdir":
        on_device(args[-1]).mkdir(parents=True, exist_ok=True)
    elif args[0] == "rm":
        for path in args[2:]:
            shutil.rmtree(on_device(path), ignore_errors=True)
    elif args[0] == "run-as":
        run_as(args[1], args[2:])
    elif args[:2] == ["am", "start"]:
        component = args[args.index("-n") + 1]
        if component != f"{PACKAGE}/.BenchmarkActivity" or not (STATE / "installed").exists():
            print(f"Starting: Intent {{ cmp={component} }}\nError type 3\nError: Activity class "
                  f"{{{component.split('/')[0]}/{PACKAGE}.BenchmarkActivity}} does not exist.")
            return
        extras = {args[i + 1]: args[i + 2] for i in range(len(args) - 2) if args[i] in ("--es", "--ei")}
        start_benchmark(extras)
    else:
        fail(f"/system/bin/sh: {args[0]}: inaccessible or not found", 127)


def run_as(package: str, args: list[str]) -> None:
    if package != PACKAGE or not (STATE / "installed").exists():
        fail(f"run-as: unknown package: {package}")
    if args[0] == "cp":
        target = on_device(args[2], APP)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(on_device(args[1]), target)
    elif args[0] == "rm":
        for path in args[2:]:
            target = on_device(path, APP)
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    elif args[0] == "cat":
        path = on_device(args[1], APP)
        if not path.is_file():
            fail(f"cat: {args[1]}: No such file or directory")
        sys.stdout.write(path.read_text())


def main(argv: list[str]) -> None:
    lines = [line for line in os.environ.get("FAKE_ADB_DEVICES", "").split(";") if line]
    if argv[:2] == ["devices", "-l"]:
        print("List of devices attached\n" + "".join(line + "\n" for line in lines))
        return
    if argv[0] == "-s":
        if not any(line.split()[0] == argv[1] for line in lines):
            fail(f"adb: device '{argv[1]}' not found")
        argv = argv[2:]
    elif len(lines) != 1:
        fail("adb: more than one device/emulator" if lines else "adb: no devices/emulators found")
    command, args = argv[0], argv[1:]
    if command == "install":
        apk = args[-1]
        if os.environ.get("FAKE_ADB_INSTALL_FAIL"):
            print("Performing Streamed Install")
            fail(f"adb: failed to install {apk}: Failure [INSTALL_FAILED_UPDATE_INCOMPATIBLE: Existing package "
                 f"{PACKAGE} signatures do not match newer version; ignoring!]")
        STATE.joinpath("installed").write_text(apk)
        print("Performing Streamed Install\nSuccess")
    elif command == "push":
        target = on_device(args[1])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args[0], target)
        print(f"{args[0]}: 1 file pushed, 0 skipped. 48.2 MB/s ({target.stat().st_size} bytes in 0.001s)")
    elif command == "shell":
        shell(args)
    elif command == "exec-out":
        run_as(args[1], args[2:]) if args[0] == "run-as" else fail("unsupported by the fake")
    elif command == "logcat":
        if args == ["-c"]:
            LOG.write_text("")
        else:
            sys.stdout.write(LOG.read_text() if LOG.exists() else "")
    else:
        fail(f"adb: unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
