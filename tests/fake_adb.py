"""A stand-in for `adb` with one simulated phone, for tests. It behaves like adb where behaviour matters:

- `adb shell ...` and `adb exec-out ...` join their arguments with spaces into ONE command line and run it with the
  device's `sh` (a real sh here), so an unquoted file name with `;` runs a second command, as on a phone;
- the device's own commands (getprop, am, run-as, and mkdir, rm, cp, cat as toybox has them) are programs on that
  shell's PATH, each failing as the real one does: `cp` into a missing folder and `cat` of a missing file are errors,
  `run-as` refuses an app that is not installed, and the app's files/ folder does not exist after a fresh install;
- paths on the device live under $FAKE_ADB_STATE/fs (the app's private folder under $FAKE_ADB_STATE/app).

Starting BenchmarkActivity does what the app does: writes files/bench/<out>.json and a log line (an error for a file
of the runtime the installed build does not ship: an APK whose bytes hold "lite" is the lite flavor) - or, with
$FAKE_ADB_CRASH, crashes with a stack trace in logcat. $FAKE_ADB_DEVICES: the device lines of `adb devices -l`,
';'-separated. $FAKE_ADB_INSTALL_FAIL: install fails. $FAKE_ADB_RESULT: the JSON text the app writes instead.
$FAKE_ADB_UNPLUG_AFTER=N: the phone is unplugged during the (N+1)th benchmark start - that start fails and every
later adb call finds no device - until $FAKE_ADB_STATE/unplugged is removed (plugged back in).
$FAKE_ADB_SLOW_SECONDS=S: the app takes S seconds to write its result, and `am force-stop` ends it first (recorded in
$FAKE_ADB_STATE/force-stopped). $FAKE_ADB_OLD_CLIENT: an adb client from before the shell protocol (Android 7):
`shell` and `exec-out` exit 0 whatever the device's command did, its errors on stdout. As the real client does,
$ANDROID_SERIAL picks the device when no -s is given, and a device that is not in the `device` state (unauthorized,
offline, no permissions, recovery, ...) refuses every command.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PACKAGE = "org.prunedroid.demo"
STATE = Path(os.environ["FAKE_ADB_STATE"])
ROOT, APP = STATE / "fs", STATE / "app"  # the device's file system; the app's private data folder
LOG = STATE / "logcat"
BIN = STATE / "bin"  # the device's commands, on its shell's PATH
DEVICE_COMMANDS = ("getprop", "am", "run-as", "mkdir", "rm", "cp", "cat")
PROPS = {"ro.product.model": "Pixel 7", "ro.product.manufacturer": "Google", "ro.product.cpu.abi": "arm64-v8a",
         "ro.build.version.release": "14", "ro.build.version.sdk": "34"}


def fail(message: str, code: int = 1) -> None:
    print(message, file=sys.stderr)
    sys.exit(code)


def on_device(path: str) -> Path:
    """A device path: absolute ones under the device root, relative ones from the current folder (the shell's is
    the root, run-as's the app's data folder)."""
    return ROOT / path.lstrip("/") if path.startswith("/") else Path.cwd() / path


def device_shell(line: str) -> int:
    """Runs one command line as the device's sh does, with the device's commands first on PATH."""
    BIN.mkdir(parents=True, exist_ok=True)
    for command in DEVICE_COMMANDS:
        program = BIN / command
        if not program.exists():
            program.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" --device {command} '
                               f'"$@"\n')
            program.chmod(0o755)
    ROOT.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    return subprocess.run(["sh", "-c", line], cwd=ROOT, env=environment, check=False).returncode


def finish(out: Path, text: str) -> None:
    """The app writing its result: at once, or after $FAKE_ADB_SLOW_SECONDS (kept pending until then)."""
    slow = float(os.environ.get("FAKE_ADB_SLOW_SECONDS", "0"))
    if slow:
        STATE.joinpath("pending").write_text(json.dumps({"due": time.time() + slow, "out": str(out), "text": text}))
    else:
        out.write_text(text)


def deliver_pending() -> None:
    """A slow app whose time has come writes its result."""
    pending = STATE / "pending"
    if pending.exists():
        job = json.loads(pending.read_text())
        if time.time() >= job["due"]:
            Path(job["out"]).write_text(job["text"])
            pending.unlink()


def start_benchmark(extras: dict) -> None:
    started = STATE / "started"
    count = int(started.read_text()) + 1 if started.exists() else 1
    started.write_text(str(count))
    if count > int(os.environ.get("FAKE_ADB_UNPLUG_AFTER", count)):  # unplugged before this start reached it
        STATE.joinpath("unplugged").write_text("")
        fail("adb: device offline")
    print(f"Starting: Intent {{ cmp={PACKAGE}/.BenchmarkActivity (has extras) }}")
    print("Status: ok\nLaunchState: COLD\nActivity: org.prunedroid.demo/.BenchmarkActivity\nTotalTime: 412\n"
          "WaitTime: 415\nComplete")
    files = APP / "files"
    model = files / extras["model"]
    sidecar = files / extras.get("sidecar", "")
    if os.environ.get("FAKE_ADB_CRASH"):
        with LOG.open("a") as log:
            log.write("E AndroidRuntime: FATAL EXCEPTION: benchmark\nE AndroidRuntime: Process: org.prunedroid.demo, "
                      "PID: 4242\nE AndroidRuntime: java.lang.UnsatisfiedLinkError: dlopen failed: library "
                      "\"libpytorch_jni.so\" not found\n")
        return
    out = files / "bench" / f"{extras['out']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)  # the app's getFilesDir() creates files/, and it makes bench/
    if "sidecar" not in extras or not sidecar.is_file():  # what BenchmarkActivity writes when an extra is missing
        out.write_text(json.dumps({"error": "java.lang.IllegalArgumentException: need --es model <file>, --es "
                                            "sidecar <file>, runs >= 1, warmup >= 0, threads >= 1"}))
        return
    installed = Path(STATE.joinpath("installed").read_text()).read_bytes()  # the APK's bytes name its flavor
    runs_kind = ".ptl" if b"lite" in installed else ".pte"
    if model.suffix != runs_kind:  # what Runner.open answers for the other runtime's file
        out.write_text(json.dumps({"error": f"java.lang.IllegalArgumentException: this build runs {runs_kind} files, "
                                            f"not {model.name}: build the app for that file"}))
        return
    size = model.stat().st_size
    median = size / 1e5
    result = {"model": model.name, "model_bytes": size, "load_ms": 12.0, "runs": int(extras["runs"]),
              "warmup": int(extras["warmup"]), "threads": int(extras["threads"]),
              "latency_ms": {"median": median, "p90": 1.1 * median, "min": 0.9 * median, "max": 1.5 * median},
              "device": {"manufacturer": "Google", "model": "Pixel 7", "abi": "arm64-v8a", "android": "14",
                         "sdk": 34},
              "runtime": "executorch-android 1.5.1" if model.suffix == ".pte" else "pytorch_android_lite 1.12.2",
              "summary": f"{model.name}: ok"}
    if os.environ.get("FAKE_ADB_OLD_APP"):  # an APK from before latencies were reported
        result = {"model": model.name, "time_ms": median}
    finish(out, os.environ.get("FAKE_ADB_RESULT") or json.dumps(result))
    with LOG.open("a") as log:
        log.write(f"I prunedroid-bench: {result.get('summary', model.name)}\n")


def device_command(command: str, args: list[str]) -> None:
    """One of the device's programs, as toybox and Android's tools behave."""
    if command == "getprop":
        print(PROPS.get(args[0], "") if args else "")
    elif command == "mkdir":
        parents = "-p" in args
        for path in (a for a in args if not a.startswith("-")):
            try:
                on_device(path).mkdir(parents=parents, exist_ok=parents)
            except OSError as err:
                fail(f"mkdir: '{path}': {err.strerror}")
    elif command == "rm":
        force, recursive = any("f" in a for a in args if a.startswith("-")), any(
            "r" in a for a in args if a.startswith("-"))
        for path in (a for a in args if not a.startswith("-")):
            target = on_device(path)
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target) if recursive else fail(f"rm: {path}: Is a directory")
            elif target.exists() or target.is_symlink():
                target.unlink()
            elif not force:
                fail(f"rm: {path}: No such file or directory")
    elif command == "cp":
        source, target = on_device(args[-2]), on_device(args[-1])
        if not source.is_file():
            fail(f"cp: {args[-2]}: No such file or directory")
        if not target.parent.is_dir():
            fail(f"cp: {args[-1]}: No such file or directory")
        shutil.copyfile(source, target)
    elif command == "cat":
        deliver_pending()
        for path in args:
            if not on_device(path).is_file():
                fail(f"cat: {path}: No such file or directory")
            sys.stdout.write(on_device(path).read_text())
    elif command == "run-as":
        if not args or args[0] != PACKAGE or not (STATE / "installed").exists():
            fail(f"run-as: unknown package: {args[0] if args else ''}")
        if len(args) < 2:
            fail("usage: run-as <package-name> [--user <uid>] <command> [<args>]")
        # run-as executes the command in the app's data folder, without another shell
        os.chdir(APP)
        program = BIN / args[1]
        if not program.exists():
            fail(f"run-as: exec failed for {args[1]}: No such file or directory")
        sys.exit(subprocess.run([str(program), *args[2:]], check=False).returncode)
    elif command == "am":
        if args[:1] == ["force-stop"]:  # the app's process is killed: a benchmark still running never writes
            if args[1:] == [PACKAGE] and STATE.joinpath("pending").exists():
                STATE.joinpath("pending").unlink()
                STATE.joinpath("force-stopped").write_text(PACKAGE)
            return
        if args[:1] != ["start"]:
            fail(f"am: unknown command {args[:1]}")
        component = args[args.index("-n") + 1]
        if component != f"{PACKAGE}/.BenchmarkActivity" or not (STATE / "installed").exists():
            print(f"Starting: Intent {{ cmp={component} }}\nError type 3\nError: Activity class "
                  f"{{{component.split('/')[0]}/{PACKAGE}.BenchmarkActivity}} does not exist.")
            return
        extras = {args[i + 1]: args[i + 2] for i in range(len(args) - 2) if args[i] in ("--es", "--ei")}
        start_benchmark(extras)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--device"]:
        device_command(argv[1], argv[2:])
        return
    lines = [line for line in os.environ.get("FAKE_ADB_DEVICES", "").split(";") if line]
    if STATE.joinpath("unplugged").exists():  # the cable came out: adb no longer lists the phone
        lines = []
    if argv[:2] == ["devices", "-l"]:
        print("List of devices attached\n" + "".join(line + "\n" for line in lines))
        return
    serial = os.environ.get("ANDROID_SERIAL") or None
    if argv[0] == "-s":
        serial, argv = argv[1], argv[2:]
    if serial:
        chosen = [line for line in lines if line.split()[0] == serial]
        if not chosen:
            fail(f"adb: device '{serial}' not found")
    elif len(lines) != 1:
        fail("adb: more than one device/emulator" if lines else "adb: no devices/emulators found")
    else:
        chosen = lines
    state = chosen[0].split()[1]
    if state == "no":  # "no permissions (missing udev rules? ...)"
        fail("adb: insufficient permissions for device: missing udev rules? user is in the plugdev group")
    if state != "device":
        fail(f"adb: device {state}." if state != "unauthorized" else "adb: device unauthorized.\nThis adb server's "
             "$ADB_VENDOR_KEYS is not set\nTry 'adb kill-server' if that seems wrong.")
    command, args = argv[0], argv[1:]
    if command == "install":
        apk = args[-1]
        if os.environ.get("FAKE_ADB_INSTALL_FAIL"):
            print("Performing Streamed Install")
            fail(f"adb: failed to install {apk}: Failure [INSTALL_FAILED_UPDATE_INCOMPATIBLE: Existing package "
                 f"{PACKAGE} signatures do not match newer version; ignoring!]")
        STATE.joinpath("installed").write_text(apk)
        APP.mkdir(parents=True, exist_ok=True)  # the data folder exists; files/ only once the app asks for it
        print("Performing Streamed Install\nSuccess")
    elif command == "push":
        source, target = Path(args[0]), ROOT / args[1].lstrip("/")
        if not source.is_file():
            fail(f"adb: error: cannot stat '{args[0]}': No such file or directory")
        target.parent.mkdir(parents=True, exist_ok=True)  # adb's sync protocol creates the folders on the way
        shutil.copyfile(source, target)
        print(f"{args[0]}: 1 file pushed, 0 skipped. 48.2 MB/s ({target.stat().st_size} bytes in 0.001s)")
    elif command in ("shell", "exec-out"):
        sys.stdout.flush()
        if os.environ.get("FAKE_ADB_OLD_CLIENT"):  # no exit status, and the device's stderr arrives on stdout
            os.dup2(sys.stdout.fileno(), sys.stderr.fileno())
            device_shell(" ".join(args))
            sys.exit(0)
        sys.exit(device_shell(" ".join(args)))  # one line for the device's sh, as adb sends it
    elif command == "logcat":
        if args == ["-c"]:
            LOG.write_text("")
        else:
            sys.stdout.write(LOG.read_text() if LOG.exists() else "")
    else:
        fail(f"adb: unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])

