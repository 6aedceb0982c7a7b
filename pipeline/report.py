"""Results as files people read: JSON for machines, a Markdown table for people, each with the command that made it."""
from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.checkpoint import atomic_path, library_versions


def machine_info() -> dict[str, Any]:
    """Where a number was measured: CPU model, cores, torch threads and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), **library_versions()}


def command_line() -> str:
    return " ".join(shlex.quote(arg) for arg in [Path(sys.argv[0]).name if sys.argv[0].endswith("invoke")
                                                 else sys.argv[0], *sys.argv[1:]])


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """rows of dicts -> a Markdown table of `columns` (missing values blank)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(stem: str | Path, payload: dict[str, Any], title: str, table: str, notes: str = "") -> None:
    """Writes `stem`.json (payload + command + machine) and `stem`.md (title, command, table, notes), atomically."""
    stem = Path(stem)
    payload = {"command": command_line(), "machine": machine_info(), **payload}
    with atomic_path(stem.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
    machine, commands = payload["machine"], payload.get("commands") or [payload["command"]]
    ran = (f"Command: `{commands[0]}`" if len(commands) == 1 else
           "Commands, in order (each resumed the cells of those before it):\n\n"
           + "\n".join(f"- `{c}`" for c in commands))
    markdown = (f"# {title}\n\n{ran}\n\nMachine: {machine['cpu']}, {machine['cores']} cores, "
                f"torch {machine['torch']} ({machine['torch_threads']} threads)\n\n{table}"
                + (f"\n{notes.strip()}\n" if notes else ""))
    with atomic_path(stem.with_suffix(".md")) as tmp:
        tmp.write_text(markdown)
