"""The whole job in one run folder: train (or reuse a base) -> prune -> fine-tune -> export -> benchmark.

runs/<name>/
  base/checkpoint.pt        trained model (or --base, used in place)
  pruned/checkpoint.pt      pruned, not fine-tuned; pruned/report.json per-layer report and top-1 right after pruning
  finetuned/checkpoint.pt   pruned and fine-tuned
  export/base.{ptl,onnx,pte,json}, export/pruned.{ptl,onnx,pte,json}  (and *-int8.{pte,onnx} with int8)
  bench.json, bench.md      the side-by-side table
  report.md                 for a person: options, every model on every runtime, channels.png, training.png
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from prunedroid import data as cifar
from prunedroid.deploy.export import VERIFY_IMAGES, Int8Options, export_checkpoint
from prunedroid.errors import PrunedroidError
from prunedroid.files import (
    atomic_path,
    atomic_paths,
    file_sha256,
    folder_lock,
    holds,
    links_below,
    plain_name,
    read_json,
    refuse_holding,
)
from prunedroid.measure.bench import benchmark, processes_note, table_rows
from prunedroid.measure.latency import APP_LATENCY, LatencyOptions
from prunedroid.measure.report import markdown_table, run_report, write_results
from prunedroid.models import fresh_arch
from prunedroid.pruned import prune_checkpoint
from prunedroid.pruning import Budget, Method, method_name, method_options
from prunedroid.pruning.method import method_of
from prunedroid.training.checkpoint import Checkpoint
from prunedroid.training.train import CHECKPOINT_NAME, TrainConfig, evaluate, make_config, recipe_of, train


def evaluation_set(method: Method, holdout: cifar.Split) -> cifar.Split | None:
    """The labelled images a data-driven method analyses: the first of the training images held out from the base's
    training (never the test set), or None for methods that look at weights only."""
    count = method_of(method).data_images
    if not count:
        return None
    if len(holdout) < count:
        fix = (f"pass --eval-images {len(holdout)} or less, or train the base with a larger --holdout" if len(holdout)
               else f"train the base with --holdout {count} or more")
        held = f"only {len(holdout)}" if len(holdout) else "none"
        raise PrunedroidError(f"{method_name(method)} needs {count} evaluation images from the held-out training "
                              f"images, but {held} were held out when the base model was trained; {fix}")
    return holdout.head(count)


def prune_stage(base_path: Path, out_dir: Path, method: Method, budget: Budget | None, data: cifar.Cifar10,
                seed: int, latency: LatencyOptions = APP_LATENCY) -> dict:
    """Prunes the checkpoint at `base_path` into `out_dir`/checkpoint.pt with report.json; returns the report.
    `data.holdout` must be the base's held-out images (load_cifar10 with the base's holdout count). --allocation
    latency keeps its lookup table of layer latencies in `latency`'s runtime beside `out_dir`, for every run on this
    machine. Top-1 before and after is measured on the same images, `data.test`."""
    refuse_holding(out_dir, {"--checkpoint": base_path})
    with folder_lock(out_dir):
        started = time.perf_counter()
        base = Checkpoint.load(base_path)
        pruned = prune_checkpoint(base, method, budget, seed, evaluation_set(method, data.holdout), data.holdout,
                                  latency=latency, latency_folder=out_dir.parent)
        seconds = time.perf_counter() - started
        result, before = evaluate(pruned.model(), data.test), evaluate(base.model(), data.test)
        pruned.metrics = {"test": result}
        report = {**(pruned.pruning or {}), "base_checkpoint": str(base_path),
                  "parent_test_top1": before["top1"], "parent_test_images": before["images"],
                  "test_top1_after_pruning": result["top1"], "test_images_after_pruning": result["images"],
                  "prune_seconds": round(seconds, 2)}
        # One unit, the checkpoint last: a resumed pipeline takes a pruned/checkpoint.pt as a finished stage.
        with atomic_paths([out_dir / "report.json", out_dir / CHECKPOINT_NAME]) as (report_tmp, checkpoint_tmp):
            report_tmp.write_text(json.dumps(report, indent=2) + "\n")
            checkpoint_tmp.write_bytes(pruned.to_bytes())
    print(f"pruned with {method_name(method)} ({(budget or method_of(method)).to_dict()}): MACs "
          f"{report['macs_before'] / 1e6:.1f}M -> {report['macs_after'] / 1e6:.1f}M "
          f"({report['mac_reduction']:.1%} fewer"
          + (f"; {report['mac_reduction_from_original']:.1%} fewer than the unpruned original"
             if "original" in report else "")
          + f"), params {report['params_before'] / 1e6:.2f}M -> {report['params_after'] / 1e6:.2f}M; test top-1 "
          f"right after pruning {result['top1']:.2%} (base {report['parent_test_top1']:.2%})",
          flush=True)
    if "candidates" in report:
        scores = [candidate["score"] for candidate in report["candidates"]]
        print(f"search: kept candidate {report['chosen'] + 1} of {len(scores)}, held-out top-1 after re-measuring "
              f"BatchNorm {max(scores):.2f}% (the candidates: {min(scores):.2f}-{max(scores):.2f}%)", flush=True)
    wholes = report.get("left_whole") or []
    for whole in wholes[:3]:  # a budget is shared among the rest: say which convs never shrink
        print(f"left whole: {', '.join(whole['convs'])}: {whole['reason']}", flush=True)
    if len(wholes) > 3:
        print(f"left whole: {len(wholes) - 3} more groups ({sum(len(w['convs']) for w in wholes[3:])} convs), listed "
              f"in the report's left_whole", flush=True)
    return report


RUN_RECORD = "run.json"  # marks a folder run_pipeline made, and holds the options a --resume must match
RUN_KIND = "prunedroid/run"


def run_options(train_config: TrainConfig, finetune_config: TrainConfig, method: Method, budget: Budget | None,
                base: str | Path | None, int8: Int8Options | None,
                latency: LatencyOptions = APP_LATENCY, data: dict | None = None) -> dict:
    """What decides a run's models - the options a resumed run must share (threads and device may change) - as plain
    JSON data. A --base is named by its path and SHA-256, so a checkpoint replaced at the same path is a different
    base; data: the data's identity (cifar.Cifar10.identity: its batch files' hashes), so a resume on other data
    is refused."""
    record = {"method": method_name(method), "options": method_options(method),
              "budget": budget.to_dict() if budget else None,
              "base": {"checkpoint": str(Path(base).resolve()), "sha256": file_sha256(base)} if base else None,
              "train": None if base else recipe_of(train_config), "finetune": recipe_of(finetune_config),
              "int8": dataclasses.asdict(int8) if int8 else None,
              "latency": dataclasses.asdict(latency) if budget and budget.allocation == "latency" else None,
              "data": data}
    return json.loads(json.dumps(record))


def _check_run_folder(run: Path, options: dict, resume: bool) -> None:
    """Refuses to resume or overwrite a folder that run_pipeline did not make (no RUN_RECORD of its kind: a user's
    folder, or a symbolic link to one), to resume one with a symbolic link anywhere below it (a stage would write,
    or clean temporaries, wherever it points) and to resume one whose options differ from `options`, naming each."""
    record = run / RUN_RECORD
    if run.is_symlink() or not record.is_file() or record.is_symlink():
        raise PrunedroidError(f"{run} is not a run folder of `invoke pipeline` (no {RUN_RECORD} in it"
                              f"{', and it is a symbolic link' if run.is_symlink() else ''}), so it is neither resumed "
                              f"nor overwritten; choose another --name, or remove it yourself if it is yours to remove")
    links = links_below(run) if resume else []
    if links:
        raise PrunedroidError(f"{links[0]} is a symbolic link, and a run folder the pipeline made has none: resuming "
                              f"would write where it points; remove the link, or choose another --name")
    stored = read_json(record, f"the {RUN_RECORD} of a pipeline run")
    if not isinstance(stored, dict) or stored.get("kind") != RUN_KIND or not isinstance(stored.get("options"), dict):
        raise PrunedroidError(f"{record} is not a pipeline run record; choose another --name")
    differing = [key for key in options if stored["options"].get(key) != options[key]]
    if differing:
        details = "; ".join(f"{key}: the run has {json.dumps(stored['options'].get(key))[:160]}, now "
                            f"{json.dumps(options[key])[:160]}"
                            + _where_they_differ(stored["options"].get(key), options[key]) for key in differing)
        raise PrunedroidError(f"cannot resume {run} with other options ({details}); give the run's own options, "
                              f"--overwrite to redo it, or another --name")


def _where_they_differ(stored: object, now: object) -> str:
    """For two records too long to show whole, the dotted paths of the entries that differ, e.g. " (they differ in
    files.test_batch)"; "" where either is not a record."""
    def paths(a: object, b: object, prefix: str) -> list[str]:
        if not (isinstance(a, dict) and isinstance(b, dict)):
            return [prefix] if a != b else []
        return [path for key in sorted(set(a) | set(b)) for path in paths(a.get(key), b.get(key), f"{prefix}{key}.")]

    if not (isinstance(stored, dict) and isinstance(now, dict)):
        return ""
    return f" (they differ in {', '.join(path.rstrip('.') for path in paths(stored, now, '')[:5])})"


@dataclass(frozen=True)
class RunPlan:
    """What a pipeline run trains and fine-tunes with, decided before any data is read: the training and fine-tuning
    recipes, the base's architecture (a --base's record, or the preset's model as built) and the training images
    the base holds out (which pruning chooses on and fine-tuning never trains on)."""

    train: TrainConfig
    finetune: TrainConfig
    arch: dict
    held_out: int


Overrides = dict[str, str | int | float | bool | None]  # option -> value as typed (None: the preset's)


def plan_run(preset: str, recipe: Overrides, finetune_recipe: Overrides, base: str | Path | None = None) -> RunPlan:
    """The run's plan from a preset and option overrides (strings as typed; None: the preset's), for a fresh base or
    the checkpoint at `base`."""
    train_config = make_config(preset, recipe)
    finetune_config = make_config(preset, finetune_recipe, finetune=True)
    if base is None:
        return RunPlan(train_config, finetune_config, fresh_arch(train_config.model, train_config.width),
                       train_config.holdout)
    checkpoint = Checkpoint.load(base)
    return RunPlan(train_config, finetune_config, checkpoint.arch, checkpoint.held_out_images)


def run_pipeline(name: str, train_config: TrainConfig, finetune_config: TrainConfig, method: Method,
                 budget: Budget | None,
                 data: cifar.Cifar10, base: str | Path | None = None, runs_dir: str | Path = "runs",
                 resume: bool = False, overwrite: bool = False, progress: bool = True, bench_runs: int = 200,
                 int8: Int8Options | None = None, latency: LatencyOptions = APP_LATENCY,
                 bench_processes: int = 1) -> dict:
    """Runs every stage into runs_dir/name (`name` a plain folder name), locked against a second process; with
    resume=True, finished stages are kept and an interrupted training or fine-tuning continues from its last epoch,
    provided the options are the run's own; overwrite=True empties a folder this function made (never another).
    int8: also export int8 files, calibrated on the base's held-out training images; latency: the runtime an
    --allocation latency budget is timed in; bench_processes: separate processes the timing is repeated in."""
    run = Path(runs_dir) / plain_name(name, "--name")
    options = run_options(train_config, finetune_config, method, budget, base, int8, latency,
                          data.identity if data is not None else None)
    if run.exists() or run.is_symlink():
        if not (resume or overwrite):
            raise PrunedroidError(f"{run} already exists; pass --resume to continue it, --overwrite to redo it, "
                                  f"or --name to start another run.")
        _check_run_folder(run, {} if overwrite else options, resume and not overwrite)
        if overwrite and base is not None and holds(run, base):
            raise PrunedroidError(f"--base {base} is inside the run folder {run}: --overwrite would remove it; copy it "
                                  f"out of the folder first, or choose another --name")
    with folder_lock(run):
        if overwrite:  # empty the locked folder rather than delete it, so the lock stays on the folder in use
            for child in run.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        fresh = not (run / RUN_RECORD).exists()
        if fresh:
            with atomic_path(run / RUN_RECORD) as tmp:
                tmp.write_text(json.dumps({"kind": RUN_KIND, "options": options}, indent=2) + "\n")
        try:
            return _stages(run, train_config, finetune_config, method, budget, data, base, progress,
                           (bench_runs, bench_processes), int8, latency)
        except BaseException:
            if fresh and [child.name for child in run.iterdir()] == [RUN_RECORD]:
                (run / RUN_RECORD).unlink()  # nothing else was written: leave no run behind
            raise


def _stages(run: Path, train_config: TrainConfig, finetune_config: TrainConfig, method: Method,
            budget: Budget | None, data: cifar.Cifar10, base: str | Path | None, progress: bool,
            timing: tuple[int, int], int8: Int8Options | None, latency: LatencyOptions) -> dict:
    base_path = Path(base) if base else run / "base" / CHECKPOINT_NAME
    seconds, started = {}, time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal started
        seconds[stage] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()

    if base:
        base_checkpoint = Checkpoint.load(base_path)  # fail now, not after training, if it is not a checkpoint
    else:
        # The folder is new or --resume was given, so resuming is always what is wanted here.
        base_checkpoint = train(train_config, data, run / "base", resume=True, progress=progress)
    lap("train")
    test = data.test.head(train_config.test_limit)  # the preset's test images (smoke: 500), as training scored
    if not (run / "pruned" / CHECKPOINT_NAME).exists():
        prune_stage(base_path, run / "pruned", method, budget, dataclasses.replace(data, test=test), train_config.seed,
                    latency)
    lap("prune")
    finetuned = train(finetune_config, data, run / "finetuned", resume=True, progress=progress,
                      init=Checkpoint.load(run / "pruned" / CHECKPOINT_NAME),
                      teacher=base_path if finetune_config.distill_weight else None)
    lap("finetune")
    calibration = data.holdout.head(int8.calibration_images) if int8 else None
    sidecars = [export_checkpoint(path, test, run / "export", label, verify_images=min(VERIFY_IMAGES, len(test)),
                                  calibration=calibration, max_drop=int8.max_drop if int8 else 0.0).sidecar
                for label, path in (("base", base_path), ("pruned", run / "finetuned" / CHECKPOINT_NAME))]
    lap("export")
    bench_runs, bench_processes = timing
    result = benchmark(sidecars, test, runs=bench_runs, processes=bench_processes)
    lap("bench")
    result["stage_seconds"] = {**seconds, "total": round(sum(seconds.values()), 1)}
    result["config"] = {"name": run.name, "method": method_name(method), "options": method_options(method),
                        "budget": budget.to_dict() if budget else None, "base": str(base_path),
                        # a --base was trained by its own recipe, not this preset's: report the one it records
                        "train": base_checkpoint.recipe if base else dataclasses.asdict(train_config),
                        "finetune": dataclasses.asdict(finetune_config)}
    rows = table_rows(result)
    table = markdown_table(rows, list(rows[0]))
    stages = ", ".join(f"{stage} {secs:.0f} s" for stage, secs in result["stage_seconds"].items())
    write_results(run / "bench", result, title=f"{run.name}: base vs {method_name(method)}-pruned "
                                                 f"({(budget or method_of(method)).to_dict()}), fine-tuned",
                  table=table, notes=f"Batch-1 latency, {result['threads']} thread(s), median/p90 of {bench_runs} "
                                     f"runs in {result['rounds']} interleaved rounds{processes_note(result)}. "
                                     f"Stages: {stages}.")
    pruning = json.loads((run / "pruned" / "report.json").read_text())
    report = run_report(run, result, table, pruning, {"training": base_checkpoint.history,
                                                      "fine-tuning": finetuned.history})
    print(f"{table}\nreport: {report}")
    return result
