"""Which code reproduces each committed result: for every results JSON under benchmarks/results/ and
benchmarks/archive/results/ that does not name its script's version itself (those written before
report.write_results recorded one), the commit that added or last changed it, the script its command ran, and whether
that script has changed since.

    python benchmarks/result_versions.py

Checking out the commit gives the script, the library and the tasks as they were committed with the result. Whether
the run that made it used exactly that code (and not an uncommitted edit) is not recorded anywhere: this names the
nearest version git knows. Results that record their own (`script`: path, SHA-256, commit, modified) are listed as
such. Needs the repository's history (a shallow clone lacks it).
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from prunedroid.measure.report import markdown_table, write_results

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"
FOLDERS = (RESULTS, BENCHMARKS / "archive" / "results")  # live results, and those of archived scripts


def git(*words: str) -> str:
    """One git command's output in the repository ("" when it fails: no such object or commit)."""
    done = subprocess.run(["git", *words], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def script_of(payload: dict) -> str:
    """The script a result's (first) command ran: "benchmarks/x.py", or "invoke <task>" for a task's output."""
    command = (payload.get("commands") or [payload["command"]])[0].split()
    return command[0] if command[0].endswith(".py") else " ".join(command[:2])


def version_row(path: Path) -> dict:
    """One result's version: recorded by itself, or inferred from git (see the module's docstring)."""
    payload = json.loads(path.read_text())
    row = {"result": str(path.relative_to(BENCHMARKS)), "script": script_of(payload)}
    if "script" in payload:
        recorded = payload["script"]
        return {**row, "commit": recorded.get("commit", ""), "source": "recorded by the result",
                "script_since": "modified when run" if recorded.get("modified") else "as committed when run"}
    relative = str(path.relative_to(ROOT))
    commit = git("log", "-1", "--follow", "--diff-filter=AM", "--format=%H", "--", relative)  # not its move
    row.update(commit=commit, source="the commit that added or last changed it")
    if not row["script"].endswith(".py"):
        return {**row, "script_since": "a task: the whole checkout at that commit"}
    archived = f"benchmarks/archive/{Path(row['script']).name}"
    then, now, now_archived = (git("rev-parse", "-q", "--verify", f"{revision}:{script}")
                               for revision, script in ((commit, row["script"]), ("HEAD", row["script"]),
                                                        ("HEAD", archived)))
    since = "unchanged since" if then == (now or now_archived) else "changed since"
    row["script_since"] = ("not in that commit" if not then else since if now
                           else f"archived as {archived}, {since}" if now_archived else "removed since")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS / "versions"), help="results stem (.json, .md)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    paths = sorted(path for folder in FOLDERS for path in folder.rglob("*.json")
                   if path != out.with_suffix(".json") and path.name != "run.json")
    rows = [version_row(path) for path in paths]
    table = [{**row, "commit": row["commit"][:12]} for row in rows]
    write_results(out, {"rows": rows}, "Which commit reproduces each committed result",
                  markdown_table(table, ["result", "script", "commit", "script_since", "source"]), notes=NOTES)


NOTES = """
`git checkout <commit>` gives the script and the package as they were committed with the result; "changed since":
today's script differs from that one (it may no longer run the same cells, or at all - see docs/results.md for what
replaced it). Where a result records its own version (`script` in its JSON) that is the version it was run with.
"""


if __name__ == "__main__":
    main()
