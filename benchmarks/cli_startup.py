"""How long the command line takes to answer `invoke --list` and `invoke <task> --help`, with the stored generated
help (prunedroid/cli_help.json, fresh: no torch import) and what generating it costs when it is stale (the option
dataclasses' modules imported, torch among them). Each command runs in its own fresh process, the commands
interleaved round by round, so load on a shared host hits all of them alike.

    python benchmarks/cli_startup.py --rounds 7 --out benchmarks/results/cli_startup
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from prunedroid.cli_help import stored
from prunedroid.measure.report import markdown_table, write_results

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "invoke --list": [sys.executable, "-m", "invoke", "--list"],
    "invoke prune --help": [sys.executable, "-m", "invoke", "prune", "--help"],
    "generating the help (stale file)": [sys.executable, "-c",
                                         "from prunedroid.cli_help import generate; generate()"],
}


def wall_s(command: list[str]) -> float:
    """Seconds from starting `command` in a fresh process to its exit (it must succeed)."""
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, capture_output=True, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="fresh processes per command")
    parser.add_argument("--out", default="benchmarks/results/cli_startup")
    args = parser.parse_args()
    if stored() is None:
        sys.exit("prunedroid/cli_help.json is stale: run `python -m prunedroid.cli_help` first")
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, command in COMMANDS.items():
            seconds[name].append(wall_s(command))
    rows = [{"command": name, "median s": f"{statistics.median(values):.2f}",
             "min-max s": f"{min(values):.2f}-{max(values):.2f}", "processes": len(values)}
            for name, values in seconds.items()]
    write_results(args.out, {"seconds": seconds, "rounds": args.rounds}, title="Command-line start-up",
                  table=markdown_table(rows, list(rows[0])),
                  notes="Wall time of one fresh process each, from start to exit. The first two read the stored help "
                        "and import no torch; the third is what a stale prunedroid/cli_help.json costs every call "
                        "until it is regenerated (the tasks then generate the help themselves).")


if __name__ == "__main__":
    main()
