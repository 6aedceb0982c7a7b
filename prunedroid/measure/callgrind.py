"""Instructions per call, counted by valgrind's callgrind: a latency proxy that no other job on a shared machine can
disturb (a timing ratio on this host has moved by up to 1.7x between processes; an instruction count repeats).

A worker process (any command line that ends by calling count_calls with the helper library it is given as its last
argument) runs under callgrind; only the calls between the helper's start and stop are counted, after a warm-up, and
each call's count is dumped under its key. Caveats: valgrind emulates the CPU up to AVX2, so the runtimes take their
AVX2 kernels (not AVX-512, nor a phone's ARM ones); instructions are not time (memory stalls and instruction-level
parallelism do not count).
"""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from prunedroid.errors import PrunedroidError

# Client requests of valgrind/callgrind.h, compiled once into a small library the worker calls through ctypes: the
# count is zeroed and switched on just before the calls and dumped, named, just after them.
HELPER = r"""
#include <valgrind/callgrind.h>
void counting_start(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_ZERO_STATS; CALLGRIND_TOGGLE_COLLECT; }
void counting_stop(const char *name) {
    CALLGRIND_TOGGLE_COLLECT; CALLGRIND_DUMP_STATS_AT(name); CALLGRIND_STOP_INSTRUMENTATION;
}
"""


def build_helper(folder: Path) -> Path:
    """HELPER compiled into `folder` as a shared library (a C compiler and valgrind's headers needed)."""
    source, library = folder / "counting.c", folder / "libcounting.so"
    source.write_text(HELPER)
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return library


def count_calls(calls: dict[str, Callable[[], object]], repeats: int, warmup: int, library: Path) -> None:
    """Runs under callgrind: each call `warmup` times, then `repeats` times counted, dumped under its key."""
    helper = ctypes.CDLL(str(library))
    for key, call in calls.items():
        for _ in range(warmup):
            call()
        helper.counting_start()
        for _ in range(repeats):
            call()
        helper.counting_stop(key.encode())


def read_dumps(folder: Path) -> dict[str, int]:
    """"model/runtime" -> instructions (Ir) counted, from callgrind's dump files in `folder`."""
    counted = {}
    # callgrind.out.<n>: one file per dump, numbered in the order they were made (models, then runtimes, in order).
    for dump in sorted(folder.glob("callgrind.out.*"), key=lambda path: int(path.suffix[1:])):
        text = dump.read_text(errors="replace")
        trigger = re.search(r"^desc: Trigger: Client Request: (.+)$", text, flags=re.M)
        total = re.search(r"^(?:totals|summary): (\d+)", text, flags=re.M)
        if trigger and total:
            counted[trigger.group(1).strip()] = int(total.group(1))
    return counted


def count_instructions(worker: list[str], repeats: int, processes: int) -> list[dict[str, int]]:
    """Runs `worker` (a command line that calls count_calls with the helper library given as its last argument)
    under callgrind in `processes` separate processes; per process, key -> instructions per call."""
    if shutil.which("valgrind") is None or shutil.which("cc") is None:
        raise PrunedroidError("counting instructions needs valgrind (with its headers, valgrind/callgrind.h) and a C "
                              "compiler: install them (Debian: apt install valgrind gcc)")
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        library = build_helper(Path(scratch))
        for index in range(processes):
            dumps = Path(scratch) / f"process-{index}"
            dumps.mkdir()
            subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
                            f"--callgrind-out-file={dumps / 'callgrind.out'}", "--quiet", *worker, str(library)],
                           check=True)
            results.append({key: round(total / repeats) for key, total in read_dumps(dumps).items()})
    return results
