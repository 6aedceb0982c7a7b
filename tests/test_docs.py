"""The README and docs/ as a user reads them: every relative link resolves, and the README starts with the two
fresh-machine commands, the second of which is exactly what CI runs."""
import json
import re
from pathlib import Path

import pytest
from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file(page: Path):
    targets = [t.split("#")[0] for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:|#", t)]
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to files that do not exist: {missing}"


def test_readme_is_a_short_guide_that_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 15_500, "the README is a five-minute guide; move detail to docs/"
    first_block = text.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert commands[0].endswith("invoke pipeline --preset quick") and commands[1].endswith("invoke test")
    assert text.index("```bash") < text.index("## Tasks")
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_every_committed_result_names_the_code_that_reproduces_it():
    """Each results JSON (live or archived) records its script's version itself or has a row in versions.json
    (benchmarks/result_versions.py: the commit it came with), naming the script its command ran."""
    benchmarks = ROOT / "benchmarks"
    listed = {row["result"]: row for row in json.loads((benchmarks / "results/versions.json").read_text())["rows"]}
    for path in sorted([*benchmarks.glob("results/**/*.json"), *benchmarks.glob("archive/results/*.json")]):
        if path.name in ("versions.json", "run.json"):
            continue
        payload = json.loads(path.read_text())
        recorded = payload.get("script", {}).get("commit")
        row = listed.get(str(path.relative_to(benchmarks)))
        assert recorded or (row and len(row["commit"]) == 40), f"{path.name}: run benchmarks/result_versions.py"
        command = (payload.get("commands") or [payload["command"]])[0]
        assert row is None or command.startswith(row["script"]), path.name
