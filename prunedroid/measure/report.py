"""Results as files people read: JSON for machines, a Markdown table for people, each with the command that made it."""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from prunedroid.files import atomic_path, atomic_paths, file_sha256
from prunedroid.measure.bench import processes_note
from prunedroid.training.checkpoint import library_versions


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


BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def script_version() -> dict[str, Any] | None:
    """The benchmark script that is running (sys.argv[0], one of benchmarks/*.py), so a result names the code that
    reproduces it: its path, SHA-256 and, in a git checkout, the commit and whether the script differs from it
    ("modified"). None for anything else (a task, a test)."""
    script = Path(sys.argv[0]).resolve()
    if script.parent != BENCHMARKS or script.suffix != ".py" or not script.is_file():
        return None
    version: dict[str, Any] = {"script": f"benchmarks/{script.name}", "sha256": file_sha256(script)}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=BENCHMARKS, capture_output=True, text=True,
                                timeout=30, check=False)
        if commit.returncode == 0:  # the script as committed (none: not in the commit) against the file as it runs
            committed, running = (subprocess.run(["git", *words], cwd=BENCHMARKS, capture_output=True, text=True,
                                                 timeout=30, check=False)
                                  for words in (["rev-parse", "--verify", "-q", f"HEAD:./{script.name}"],
                                                ["hash-object", script.name]))
            version.update(commit=commit.stdout.strip(),
                           modified=committed.returncode != 0 or committed.stdout.strip() != running.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):  # no git here: the hash still names the script
        pass
    return version


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """rows of dicts -> a Markdown table of `columns` (missing values blank)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(stem: str | Path, payload: dict[str, Any], title: str, table: str, notes: str = "") -> None:
    """Writes `stem`.json (payload + command + machine) and `stem`.md (title, command, table, notes) as a unit: both
    land, or neither changes (a full disk part-way leaves the old pair)."""
    stem = Path(stem)
    script = script_version()
    payload = {"command": command_line(), "machine": machine_info(), **({"script": script} if script else {}),
               **payload}
    machine, commands = payload["machine"], payload.get("commands") or [payload["command"]]
    ran = (f"Command: `{commands[0]}`" if len(commands) == 1 else
           "Commands, in order (each resumed the cells of those before it):\n\n"
           + "\n".join(f"- `{c}`" for c in commands))
    if script:
        ran += (f"\n\nScript: `{script['script']}`, SHA-256 {script['sha256'][:12]}"
                + (f", commit {script['commit'][:12]}{' (modified since)' if script['modified'] else ''}"
                   if "commit" in script else ""))
    markdown = (f"# {title}\n\n{ran}\n\nMachine: {machine['cpu']}, {machine['cores']} cores, "
                f"torch {machine['torch']} ({machine['torch_threads']} threads)\n\n{table}"
                + (f"\n{notes.strip()}\n" if notes else ""))
    with atomic_paths([stem.with_suffix(".md"), stem.with_suffix(".json")]) as (markdown_tmp, json_tmp):
        markdown_tmp.write_text(markdown)
        json_tmp.write_text(json.dumps(payload, indent=2) + "\n")


def _figure():
    """A pyplot figure on the file-only backend (no display is needed, or may exist)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_channels(layers: Sequence[dict], path: Path) -> None:
    """Bar chart of each conv layer's channels before and after pruning (`layers`: a pruning report's rows)."""
    plt = _figure()
    figure, axis = plt.subplots(figsize=(8, 3.5))
    index = range(len(layers))
    axis.bar([i - 0.2 for i in index], [row["channels_before"] for row in layers], 0.4, label="before")
    axis.bar([i + 0.2 for i in index], [row["channels_after"] for row in layers], 0.4, label="after")
    axis.set(xlabel="conv layer", ylabel="channels", xticks=list(index), title="Channels per layer")
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)


def plot_training(histories: dict[str, Sequence[dict]], path: Path) -> None:
    """Training loss and held-out top-1 per epoch, one line per stage (`histories`: stage -> checkpoint history)."""
    plt = _figure()
    figure, (loss_axis, top1_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
    offset = 0
    for stage, history in histories.items():
        epochs = [offset + record["epoch"] for record in history]
        loss_axis.plot(epochs, [record["train_loss"] for record in history], marker="o", label=stage)
        held_out = [(e, record["holdout_top1"]) for e, record in zip(epochs, history) if "holdout_top1" in record]
        if held_out:
            top1_axis.plot(*zip(*held_out), marker="o", label=stage)
        offset = epochs[-1] if epochs else offset
    loss_axis.set(xlabel="epoch (fine-tuning follows training)", ylabel="training loss", title="Training loss")
    top1_axis.set(xlabel="epoch (fine-tuning follows training)", ylabel="top-1", title="Held-out top-1")
    for axis in (loss_axis, top1_axis):
        if axis.get_legend_handles_labels()[0]:  # a --base from elsewhere may carry no history
            axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)


def run_report(run: Path, bench: dict, bench_table: str, pruning: dict, histories: dict[str, Sequence[dict]]
               ) -> Path:
    """`run`/report.md for a person: what ran with which options, every model on every runtime, per-layer channels
    (channels.png) and training curves (training.png). bench: run_pipeline's result (benchmark() plus config and
    stage_seconds) and bench_table its Markdown table; pruning: the pruned stage's report.json."""
    config, machine = bench["config"], machine_info()
    plot_channels(pruning["layers"], run / "channels.png")
    plot_training(histories, run / "training.png")
    percent = lambda value: "n/a" if value is None else f"{value:.2%}"
    def recipe(stage: str) -> str:
        shown = ("width", "epochs", "batch_size", "lr", "schedule", "seed")
        distilled = config[stage].get("distill_weight")
        recorded = [f"{key} {config[stage][key]}" for key in shown if key in config[stage]]
        return (", ".join(recorded) or "not recorded in the checkpoint") + (
            f", distilled from the base (weight {distilled}, temperature {config[stage]['distill_temperature']})"
            if distilled else "")

    layer_rows = [{"layer": row["layer"], "before": row["channels_before"], "after": row["channels_after"],
                   "kept": f"{row['channels_after'] / row['channels_before']:.0%}"} for row in pruning["layers"]]
    stages = ", ".join(f"{stage} {secs:.0f} s" for stage, secs in bench["stage_seconds"].items())
    budget = json.dumps(config["budget"]) if config["budget"] else "chosen by the method"
    text = f"""# Run {config['name']}

Command: `{command_line()}`

Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}. Stages: {stages}.

## What ran
- Base: `{config['base']}` (training recipe: {recipe('train')})
- Pruning: {config['method']}{' ' + json.dumps(config['options']) if config['options'] else ''}, budget {budget}
- Fine-tuning: {recipe('finetune')}

## Results
Test top-1 on {bench['test_images']:,} CIFAR-10 test images; MACs are multiply-accumulates per image; latency is
batch 1, {bench['threads']} thread(s), median and p90 of {bench['runs']} runs in {bench['rounds']} interleaved
rounds{processes_note(bench)}.
Right after pruning, before fine-tuning, top-1 was {percent(pruning['test_top1_after_pruning'])}; pruning removed
{pruning['mac_reduction']:.1%} of the MACs ({pruning['macs_before'] / 1e6:.2f}M -> {pruning['macs_after'] / 1e6:.2f}M)
and {pruning['param_reduction']:.1%} of the parameters.

{bench_table}
## Channels per layer

![channels per layer](channels.png)

{markdown_table(layer_rows, ["layer", "before", "after", "kept"])}
## Training curves

![training curves](training.png)

Files: `base/`, `pruned/` (report.json), `finetuned/` checkpoints; `export/` (.ptl, .onnx and the sidecar .json
the app reads); `bench.json` / `bench.md`.
"""
    with atomic_path(run / "report.md") as tmp:
        tmp.write_text(text)
    return run / "report.md"
