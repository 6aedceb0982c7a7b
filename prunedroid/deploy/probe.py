"""Model files from outside this process are first opened in a child process: a damaged or crafted file can abort a
native runtime (ExecuTorch's loader calls std::terminate on some malformed programs), and an abort ends the
process however Python code is written. The child loads each file in its runtime and runs it once on zeros; only if
it exits cleanly does the caller load the files itself.

    python -m prunedroid.deploy.probe <input shape>:<file> [...]     e.g. 1,3,32,32:export/model.pte
"""
from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from prunedroid.deploy.formats import format_of
from prunedroid.errors import PrunedroidError
from prunedroid.files import file_sha256

TIMEOUT_S = 300
# SHA-256s of files this process has seen run: probed here, or written and run by export. Identical bytes run
# identically, so a file with one of these hashes needs no second child process.
_RUNNABLE: set[str] = set()


def mark_runnable(sha256: str) -> None:
    """Records that a file with this SHA-256 loaded and ran in this process (export verifies what it writes)."""
    _RUNNABLE.add(sha256)


def probe(files: dict[Path, Sequence[int]]) -> None:
    """Raises an error naming the first of `files` (a registered format's file -> its input shape) that its runtime
    cannot load and run on a zero input, whether it raised or crashed the child process (one child for all of them).
    Files whose bytes already ran in this process are not run again."""
    hashes = {path: file_sha256(path) for path in files}
    paths = [path for path in files if hashes[path] not in _RUNNABLE]
    if not paths:
        return
    command = [sys.executable, "-m", "prunedroid.deploy.probe",
               *(f"{','.join(map(str, files[path]))}:{path}" for path in paths)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
                                cwd=Path(__file__).resolve().parents[2])
    except subprocess.TimeoutExpired:
        raise PrunedroidError(f"loading {', '.join(map(str, paths))} did not finish in {TIMEOUT_S} s") from None
    passed = [line[3:] for line in result.stdout.splitlines() if line.startswith("ok ")]
    _RUNNABLE.update(hashes[path] for path in paths[:len(passed)])
    if result.returncode == 0 and len(passed) == len(paths):
        return
    failed = paths[len(passed)] if len(passed) < len(paths) else paths[-1]
    reasons = [line[5:] for line in result.stdout.splitlines() if line.startswith("fail ")]
    if result.returncode < 0:
        why = f"it crashed its runtime ({signal.Signals(-result.returncode).name})"
    else:
        why = reasons[0] if reasons else (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
    raise PrunedroidError(f"{failed} cannot be run by its runtime: {why[:300]}; the file is damaged or was not written "
                          f"by `invoke export`: export again")


def main(arguments: list[str]) -> int:
    import torch

    for argument in arguments:
        shape, name = argument.split(":", 1)
        try:
            path = Path(name)
            format_of(path).load(path, None)(torch.zeros(*(int(s) for s in shape.split(","))))
        except Exception as err:  # any refusal of the runtime means the same: this file cannot run
            print(f"fail {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}",
                  flush=True)
            return 1
        print(f"ok {name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
