"""prunedroid tasks: `invoke --list`, `invoke <task> --help`. Tasks only parse options and call the package."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import shlex
import sys
from pathlib import Path
from typing import cast

from invoke import Exit, task

from prunedroid.cli_help import flag, flagged, option_help
from prunedroid.errors import PrunedroidError, ReportedByRankZero, os_error_message, unexpected_error_message
from prunedroid.options import parse_option

DATA_DIR_HELP = ("folder with the CIFAR-10 python batches (default: $CIFAR10_DIR, then data/cifar-10-batches-py; "
                 "downloaded there if missing)")
RUN_HELP = {
    "preset": "smoke (seconds, for tests), quick (~10 min on 2 CPU cores) or paper (full VGG16-BN, for a GPU); "
              "every recipe option overrides it",
    "out": "run folder for the checkpoint (default runs/<preset>)",
    "data_dir": DATA_DIR_HELP,
    "resume": "continue from the run folder's checkpoint (same options required)",
    "overwrite": "start over even if the run folder already has a checkpoint",
    "teacher": "checkpoint to distil from with --distill-weight (e.g. the unpruned base)",
}


OPTION_HELP = option_help()  # generated from the option dataclasses; imports no torch while fresh
RECIPE_HELP = OPTION_HELP["recipe"]


def command(name: str | None = None, help: dict[str, str] | None = None, generated: dict[str, str] | None = None,
            out: str = "--out"):
    """An invoke task whose options are all flags (a positional argument would swallow `--help` and run the task)
    and whose PrunedroidError or OS error (unwritable folder, full disk) ends as one line and exit code 2.

    generated: options declared elsewhere (option dataclasses' fields: name -> help), each added as a flag with
    default None and handed to the task in its **options. out: the option that names where the task writes, which
    an OS error's fix names.

    Numbers default to strings ("200", not 200): invoke casts a typed default's values itself and answers a typo with
    a traceback, so the package parses them instead (`whole`, `parse_option`)."""

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except Exit:  # a task's own exit code (`invoke test`) is its answer, not a failure to explain
                raise
            except ReportedByRankZero:  # under torchrun: process 0 says it, once
                raise Exit(code=2) from None
            except PrunedroidError as err:
                raise Exit(f"error: {err.worded(flag)}", code=2) from None
            except OSError as err:
                raise Exit(f"error: {os_error_message(err, out)}", code=2) from None
            except Exception as err:  # a defect, or input no check foresaw: one line, and the trace on request
                if os.environ.get("PRUNEDROID_TRACEBACK"):
                    raise
                raise Exit(unexpected_error_message(err), code=2) from None

        if generated:
            signature = inspect.signature(function)
            own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
            wrapper.__signature__ = signature.replace(parameters=own + [
                inspect.Parameter(option, inspect.Parameter.KEYWORD_ONLY, default=None)
                for option in generated if option not in signature.parameters])
        return task(wrapper, name=name, help={**(help or {}), **(generated or {})}, positional=[],
                    auto_shortflags=False)

    return decorate


def required(**options: str | None) -> None:
    """Refuses a task call missing a required option (all options are flags, so invoke cannot say it)."""
    missing = [name for name, value in options.items() if value in (None, "")]
    if missing:
        raise PrunedroidError(f"missing {', '.join(map(flag, missing))}; see the "
                              "task's --help")


def whole(value: str | int, option: str) -> int:
    return cast(int, parse_option(str(value), "int", option))


def _launched(config, data_dir) -> bool:
    """With `nproc` above 1, runs this command line in that many processes under torchrun and says so (True);
    False where this process is to train: a plain run, or one of the processes torchrun started."""
    from prunedroid.data import locate_cifar10
    from prunedroid.training.distributed import World, launch

    world = World.from_environment()
    if world.distributed or config.nproc == 1:
        if world.distributed and config.nproc not in (1, world.local_size):
            raise PrunedroidError(f"--nproc {config.nproc} under torchrun, which started {world.local_size} processes "
                                  "on this machine: leave --nproc out when torchrun launches")
        return False
    locate_cifar10(data_dir)  # downloaded once here, not by every process at the same time
    code = launch(config.nproc, sys.argv[1:])
    if code:
        raise Exit(code=code)
    return True


@command(help=RUN_HELP, generated=RECIPE_HELP)
def train(c, preset="quick", out=None, data_dir=None, resume=False, overwrite=False, teacher=None, **recipe):
    """Train VGG16-BN on CIFAR-10; writes <out>/checkpoint.pt every epoch."""
    from prunedroid.data import load_cifar10
    from prunedroid.training.train import make_config
    from prunedroid.training.train import train as run_training

    config = make_config(preset, recipe)
    if _launched(config, data_dir):
        return
    data = load_cifar10(data_dir, holdout=config.holdout)
    run_training(config, data, out or Path("runs") / preset, resume=resume, overwrite=overwrite,
                 progress=sys.stderr.isatty(), teacher=teacher)


@command(help={"checkpoint": "checkpoint to evaluate, required (e.g. runs/quick/checkpoint.pt)",
            "data_dir": DATA_DIR_HELP, "test_limit": "evaluate on the first N test images only"})
def evaluate(c, checkpoint=None, data_dir=None, test_limit=None):
    """Top-1 on the CIFAR-10 test set (all 10,000 images), with MACs and parameters."""
    from prunedroid.data import load_test
    from prunedroid.pruning.cost import count_cost
    from prunedroid.training.checkpoint import Checkpoint
    from prunedroid.training.train import evaluate as run_evaluation

    required(checkpoint=checkpoint)
    limit = None if test_limit is None else whole(test_limit, "test_limit")
    if limit is not None and limit < 1:
        raise PrunedroidError(f"--test-limit must be >= 1 image, got {limit}")
    model = Checkpoint.load(checkpoint).model()
    test = load_test(data_dir).head(limit)
    result = run_evaluation(model, test)
    cost = count_cost(model)
    print(f"{checkpoint}: test top-1 {result['top1']:.2%} on {result['images']} images, loss {result['loss']:.4f}; "
          f"{cost.macs / 1e6:.1f}M MACs, {cost.params / 1e6:.3f}M params")


def _say(note: str) -> None:
    print(flagged(note), flush=True)


BUDGET_HELP = OPTION_HELP["budget"]
METHOD_HELP, METHOD_OPTIONS_HELP = OPTION_HELP["method"], OPTION_HELP["method_options"]
LATENCY_HELP = OPTION_HELP["latency"]
PRUNE_OPTIONS = {**BUDGET_HELP, **METHOD_OPTIONS_HELP, **LATENCY_HELP}


@command(help={"checkpoint": "trained checkpoint to prune (required)", "method": METHOD_HELP,
               "out": "folder for checkpoint.pt and report.json (default: <checkpoint folder>-<method>)",
               "data_dir": DATA_DIR_HELP, "seed": "seed for methods that draw random numbers (default 0)",
               "overwrite": "replace an existing output folder"}, generated=PRUNE_OPTIONS)
def prune(c, checkpoint=None, method="l1", out=None, data_dir=None, seed="0", overwrite=False, **options):
    """Remove whole channels; writes the smaller model and a per-layer report, with top-1 right after pruning."""
    from prunedroid.data import load_cifar10
    from prunedroid.flow import prune_stage
    from prunedroid.options import check_seed
    from prunedroid.request import fitted_budget, latency_options, method_and_budget
    from prunedroid.training.checkpoint import Checkpoint

    required(checkpoint=checkpoint)
    pruning, budget = method_and_budget(method, options)
    seed = check_seed(whole(seed, "seed"))
    out = Path(out) if out else Path(f"{Path(checkpoint).parent}-{method}")
    if out.exists() and not overwrite:
        raise PrunedroidError(f"{out} already exists; pass --overwrite or another --out")
    base = Checkpoint.load(checkpoint)
    latency = latency_options(options, budget)
    budget = fitted_budget(base.arch, budget, options.get("round_to") is not None, say=_say)
    prune_stage(Path(checkpoint), out, pruning, budget, load_cifar10(data_dir, holdout=base.held_out_images), seed,
                latency)


# Fixed by the base model's run.
NOT_FOR_FINETUNING = ("model", "width", "momentum", "nesterov", "holdout", "channels_last")


@command(help={**RUN_HELP, "checkpoint": "pruned checkpoint to fine-tune (required)",
               "preset": "whose fine-tuning recipe to use: smoke, quick (3 epochs, lr 0.02) or paper (40 epochs)",
               "out": "run folder (default: <checkpoint folder>-finetuned)"},
         generated={k: v for k, v in RECIPE_HELP.items() if k not in NOT_FOR_FINETUNING})
def finetune(c, checkpoint=None, preset="quick", out=None, data_dir=None, resume=False, overwrite=False, teacher=None,
             **recipe):
    """Fine-tune a pruned model with the training loop and a shorter, gentler schedule."""
    from prunedroid.data import load_cifar10
    from prunedroid.files import refuse_holding
    from prunedroid.training.checkpoint import Checkpoint
    from prunedroid.training.train import make_config
    from prunedroid.training.train import train as run_training

    required(checkpoint=checkpoint)
    out = out or Path(f"{Path(checkpoint).parent}-finetuned")
    refuse_holding(out, {"--checkpoint": checkpoint})
    init = Checkpoint.load(checkpoint)
    # The base's held-out images stay out of training: pruning chose on them, and they judge the model after.
    config = dataclasses.replace(make_config(preset, recipe, finetune=True), holdout=init.held_out_images)
    if _launched(config, data_dir):
        return
    data = load_cifar10(data_dir, holdout=config.holdout)
    run_training(config, data, out, resume=resume, overwrite=overwrite, progress=sys.stderr.isatty(), init=init,
                 teacher=teacher)


QUANTIZE_HELP = {
    "quantize": "int8: also write each format's int8 file (<name>-int8.pte, .onnx, .ptl), each refused when its test "
                "top-1 drops more than --max-drop", **OPTION_HELP["int8"]}


def _int8_options(quantize, calibration_images, max_drop):
    from prunedroid.deploy.export import Int8Options

    return Int8Options.from_options(quantize, {"calibration_images": calibration_images, "max_drop": max_drop})


@command(help={"checkpoint": "checkpoint to export (required)",
               "out": "folder for <name>.ptl, <name>.onnx, <name>.pte, <name>.json",
               "name": "file name stem (default: model)", "static_batch": "ONNX with a fixed batch of 1",
               "data_dir": DATA_DIR_HELP, **QUANTIZE_HELP})
def export(c, checkpoint=None, out="export", name="model", static_batch=False, data_dir=None, quantize=None,
           calibration_images=None, max_drop=None):
    """Export to TorchScript Lite (.ptl), ONNX and ExecuTorch (.pte), each checked in its runtime against PyTorch."""
    from prunedroid.data import load_cifar10, load_test
    from prunedroid.deploy.export import export_checkpoint
    from prunedroid.deploy.formats import FORMATS, int8_formats
    from prunedroid.files import plain_name
    from prunedroid.training.checkpoint import Checkpoint, existing_checkpoint

    required(checkpoint=checkpoint)
    plain_name(name, "--name")
    int8 = _int8_options(quantize, calibration_images, max_drop)
    existing_checkpoint(checkpoint)  # a wrong path fails before the data is looked for (or downloaded)
    if int8:  # calibrated on the base's held-out training images, never on test images
        data = load_cifar10(data_dir, holdout=Checkpoint.load(checkpoint).held_out_images)
        test, calibration = data.test, data.holdout.head(int8.calibration_images)
    else:
        test, calibration = load_test(data_dir), None
    result = export_checkpoint(checkpoint, test, out, name, dynamic_batch=not static_batch, calibration=calibration,
                               max_drop=int8.max_drop if int8 else 0.0)
    report, checks = result.report, result.report["verification"]
    lines = [f"{report[kind]} ({report[f'{kind}_bytes'] / 1e6:.2f} MB, max |diff| vs PyTorch "
             f"{checks[entry.check]['max_abs_diff']:.1e} on {checks[entry.check]['images']} test images)"
             for kind, entry in FORMATS.items()]
    if report["int8"]:
        int8_report = report["int8"]
        lines += [f"{int8_report[entry.kind]} ({int8_report[f'{entry.kind}_bytes'] / 1e6:.2f} MB, test top-1 "
                  f"{100 * int8_report['test_top1'][entry.runtime]:.2f}% vs fp32 "
                  f"{100 * int8_report['fp32_test_top1']:.2f}%)" for entry in int8_formats()]
    print("\n".join(lines) + f"\nTorchScript bytecode v{report['torchscript']['bytecode_version']}, "
          f"optimize_for_mobile: {report['torchscript']['optimize_for_mobile']}; ExecuTorch "
          f"{report['executorch']['version']}, {report['executorch']['delegated_fraction']:.0%} of operators on "
          f"XNNPACK; sidecar {result.sidecar}")


PROCESSES_HELP = ("separate processes the timing is repeated in (default 5): each latency ratio is their median, "
                  "shown with its min-max, and a model is flagged slow for its MACs if any process says so")


@command(help={"models": "comma-separated sidecar JSON files written by `invoke export` (required)",
            "threads": "threads for every runtime (default 1, as a phone's big core)",
            "runs": "timed runs per model/runtime (default 200)", "processes": PROCESSES_HELP,
            "warmup": "untimed runs first (default 20)", "out": "results path without extension (writes .json and .md)",
            "data_dir": DATA_DIR_HELP})
def bench(c, models=None, threads="1", runs="200", warmup="20", processes="5", out="bench", data_dir=None):
    """Batch-1 latency, size, MACs, params and top-1 for each model in eager PyTorch, TorchScript Lite, onnxruntime."""
    from prunedroid.data import load_test
    from prunedroid.deploy.sidecar import existing_sidecar
    from prunedroid.files import check_writable
    from prunedroid.measure.bench import ROUNDS, benchmark, check_timing, table_rows
    from prunedroid.measure.report import markdown_table, write_results

    required(models=models)
    timing = dict(threads=whole(threads, "threads"), warmup=whole(warmup, "warmup"), runs=whole(runs, "runs"),
                  processes=whole(processes, "processes"))
    check_timing(**timing, rounds=ROUNDS)  # before any file is read
    check_writable(Path(out).parent)  # before anything is measured
    sidecars = [existing_sidecar(path) for path in models.split(",")]
    result = benchmark(sidecars, load_test(data_dir), **timing)
    rows = table_rows(result)
    table = markdown_table(rows, list(rows[0]))
    write_results(out, result, title="Host benchmark", table=table)
    print(table)


@command(name="build-apk", help={"model": "sidecar JSON written by `invoke export` (default: export/model.json)",
                              "variant": "debug (default; what bench-device needs) or release",
                              "runtime": "executorch (the .pte, default) or lite (the .ptl on PyTorch Mobile)",
                              "precision": "fp32 (default) or int8 (-int8.pte / -int8.ptl of `export --quantize int8`)",
                              "builder": "auto (default: Gradle when it and an Android SDK are there, else direct), "
                                         "gradle, or direct (aapt2, javac, D8 and apksigner, no Gradle)",
                              "abi": "with the direct builder: comma-separated ABIs to package (default: the "
                                     "flavor's abiFilters, arm64-v8a,x86_64)",
                              "keystore": "with --variant release and the direct builder: your keystore (password in "
                                          "$PRUNEDROID_KEYSTORE_PASSWORD; default: the debug key)",
                              "key_alias": "the key's alias in --keystore",
                              "data_dir": DATA_DIR_HELP})
def build_apk(c, model="export/model.json", variant="debug", runtime="executorch", precision="fp32", builder="auto",
              abi=None, keystore=None, key_alias=None, data_dir=None):
    """Stage the model, its sidecar, labels and CIFAR-10 test samples into android_app/ and build the APK."""
    from prunedroid.android.build import ApkRequest, page_size_warning
    from prunedroid.android.build import build_apk as build
    from prunedroid.data import load_test

    request = ApkRequest(variant, runtime, precision, builder, tuple(abi.split(",")) if abi else None,
                         Path(keystore) if keystore else None, key_alias)
    apk = build(Path(model), lambda: load_test(data_dir), request)
    print(f"{apk} ({apk.stat().st_size / 1e6:.1f} MB); install: adb install -r {apk}")
    warning = page_size_warning(apk)
    if warning:
        print(warning)


RESULT_TIMEOUT_HELP = ("seconds to wait for each result from the phone (default 300); past it the app's benchmark is "
                       "stopped")


def _timeout(value: str) -> int:
    seconds = whole(value, "timeout")
    if seconds < 1:
        raise PrunedroidError(f"--timeout must be at least 1 second, got {seconds}")
    return seconds


@command(name="bench-device", help={
    "models": "comma-separated sidecar JSON files written by `invoke export` (required)",
    "apk": "the ExecuTorch build of the app (default: where `invoke build-apk` writes its debug build): each model's "
           ".pte runs on it",
    "lite_apk": "also the lite build (`invoke build-apk --runtime lite`): each model's .ptl runs on it",
    "serial": "the device to use when several are attached",
    "runs": "timed runs per model on the device (default 100)", "warmup": "untimed runs first (default 20)",
    "threads": "runtime threads on the phone (default 1)", "timeout": RESULT_TIMEOUT_HELP,
    "report": "results stem: rows are added to <report>.json/.md from `invoke bench`, or a new report is started"},
         out="--report")
def bench_device(c, models=None, apk=None, lite_apk=None, serial=None, runs="100", warmup="20", threads="1",
                 timeout="300", report="bench"):
    """Latency of each exported model on an Android phone or emulator over adb, beside the host runtimes."""
    from prunedroid.android.build import apk_path
    from prunedroid.android.device import bench_device as run_on_device
    from prunedroid.deploy.sidecar import Sidecar
    from prunedroid.files import check_writable
    from prunedroid.measure.bench import add_device_rows, read_report, same_models, table_rows
    from prunedroid.measure.report import markdown_table, write_results

    required(models=models)
    sidecars = [Path(m) for m in models.split(",")]
    stem = Path(report)
    host = read_report(stem.with_suffix(".json")) if stem.with_suffix(".json").exists() else {}
    check_writable(stem.parent)
    records = {p.stem: Sidecar.read(p) for p in sidecars}
    same_models(host, records)  # before the phone is used
    apks = {"executorch": Path(apk) if apk else apk_path(), **({"lite": Path(lite_apk)} if lite_apk else {})}
    device = run_on_device(sidecars, apks, serial, whole(warmup, "warmup"), whole(runs, "runs"),
                           whole(threads, "threads"), timeout=_timeout(timeout))
    host = {("host_command" if k == "command" else k): v for k, v in host.items() if k != "machine"}
    result = add_device_rows(host, device, records)
    rows = table_rows(result)
    table = markdown_table(rows, list(rows[0]))
    write_results(stem, result, title="Host and device benchmark", table=table)
    print(table)


@command(name="latency-table", help={
    "checkpoint": "the model a latency prune will cut (required): the table holds every layer shape its search can "
                  "reach", "device": "time the shapes on an Android phone over adb, with the app's benchmark",
    "out": "the table (JSON); required with --device; default: latency-table-<runtime>.json where `invoke prune "
           "--checkpoint` looks (beside the checkpoint's folder)",
    "round_to": BUDGET_HELP["round_to"], "min_keep": BUDGET_HELP["min_keep"],
    "latency_runtime": LATENCY_HELP["latency_runtime"],
    "apk": "with --device: the debug APK `invoke build-apk` built (default: where it writes the ExecuTorch one)",
    "serial": "with --device: which device",
    "runs": "with --device: timed runs per shape (default 50)", "warmup": "with --device: untimed runs first "
    "(default 10)", "threads": "with --device: runtime threads on the phone (default 1)",
    "timeout": f"with --device: {RESULT_TIMEOUT_HELP}"})
def latency_table(c, checkpoint=None, device=False, out=None, round_to=None, min_keep=None, latency_runtime=None,
                  apk=None, serial=None, runs="50", warmup="10", threads="1", timeout="300"):
    """Time every layer shape a --allocation latency prune of a checkpoint can reach, here or on a phone (resumable)."""
    from prunedroid.android.build import apk_path
    from prunedroid.measure.latency import LatencyOptions, LatencyTable, model_shapes
    from prunedroid.options import with_options
    from prunedroid.training.checkpoint import Checkpoint

    required(checkpoint=checkpoint)
    options = with_options(LatencyOptions(), {"latency_runtime": latency_runtime}, "latency")
    shapes, budget = model_shapes(Checkpoint.load(checkpoint).arch, round_to, min_keep)
    print(f"{len(shapes)} layer shapes at --round-to {budget.round_to}, --min-keep {budget.min_keep}", flush=True)
    if device:
        from prunedroid.android.device import device_latency_table

        required(out=out)
        table = device_latency_table(shapes, Path(out), Path(apk) if apk else apk_path(), options.latency_runtime,
                                     serial, whole(warmup, "warmup"), whole(runs, "runs"), whole(threads, "threads"),
                                     timeout=_timeout(timeout), progress=print)
        print(f"{out}: {len(table['ms'])} shapes timed on {table['where']['device']['model']}; use it with `invoke "
              f"prune --allocation latency --latency-table {out}`")
        return
    path = Path(out) if out else options.table_path(Path(checkpoint).resolve().parent.parent)
    table = LatencyTable.load(path, options.latency_runtime)
    table.fill(shapes)
    print(f"{path}: {len(table.ms)} shapes ({table.measured} timed now) in {table.where['runtime']}")


@command(help={"preset": "smoke, quick or paper: the training and fine-tuning recipe", "name": "run folder name "
            "under runs/ (default: the preset)", "base": "reuse this trained checkpoint instead of training",
            "method": METHOD_HELP, "model": RECIPE_HELP["model"], "finetune_epochs": "override the fine-tuning epochs",
            "distill_weight": "fine-tune with this share of the loss distilled from the unpruned base (default 0)",
            "distill_temperature": RECIPE_HELP["distill_temperature"],
            "resume": "continue an interrupted run, keeping finished stages", "overwrite": "redo an existing run",
            "bench_runs": "timed runs per model and runtime (default 200)", "bench_processes": PROCESSES_HELP,
            "data_dir": DATA_DIR_HELP,
            "device": RECIPE_HELP["device"], "runs_dir": "folder holding the run folders", **QUANTIZE_HELP,
            "quantize": "int8 (default: the app's int8 .pte is measured beside fp32; refused, and the run stopped, "
                        "if test top-1 drops more than --max-drop) or none (fp32 files only)"},
         generated=PRUNE_OPTIONS, out="--runs-dir")
def pipeline(c, preset="quick", name=None, base=None, model=None, method="l1", finetune_epochs=None, resume=False,
             overwrite=False, bench_runs="200", bench_processes="5", data_dir=None, device=None, runs_dir="runs",
             quantize="int8",
             calibration_images=None, max_drop=None, distill_weight=None, distill_temperature=None, **options):
    """Train (or reuse --base) -> prune -> fine-tune -> export -> benchmark, into runs/<name>/."""
    from prunedroid.data import load_cifar10
    from prunedroid.files import plain_name
    from prunedroid.flow import plan_run, run_pipeline
    from prunedroid.measure.bench import ROUNDS, check_timing
    from prunedroid.request import fitted_budget, latency_options, method_and_budget

    run_name = plain_name(name or preset, "--name")
    pruning, budget = method_and_budget(method, options, default_budget=0.5)
    latency = latency_options(options, budget)
    timed_runs, timing_processes = whole(bench_runs, "bench_runs"), whole(bench_processes, "bench_processes")
    int8 = _int8_options(quantize, calibration_images, max_drop)
    check_timing(threads=1, warmup=0, runs=timed_runs, rounds=ROUNDS, processes=timing_processes)  # not after training
    plan = plan_run(preset, {"model": model, "device": device},
                    {"model": model, "epochs": finetune_epochs, "device": device, "distill_weight": distill_weight,
                     "distill_temperature": distill_temperature}, base)
    budget = fitted_budget(plan.arch, budget, options.get("round_to") is not None, say=_say)
    data = load_cifar10(data_dir, holdout=plan.held_out)
    run_pipeline(run_name, plan.train, plan.finetune, pruning, budget, data, base=base, runs_dir=runs_dir,
                 resume=resume, overwrite=overwrite, progress=sys.stderr.isatty(), bench_runs=timed_runs,
                 bench_processes=timing_processes,
                 int8=int8, latency=latency)


def _run(c, *words: str, args: str = "") -> int:
    """Runs the program `words` with `args` (typed as on a shell: split as a shell would, never interpreted) through
    invoke's shell, every word quoted: an interpreter's path or an argument with a space or `;` stays one word."""
    try:
        extra = shlex.split(args)
    except ValueError as err:
        raise PrunedroidError(f"--args {args!r} cannot be split into words ({err}): close its quotes") from None
    return c.run(shlex.join([*words, *extra]), warn=True, pty=False).exited


def _run_script(c, script, args):
    code = _run(c, sys.executable, f"benchmarks/{script}", args=args)
    if code:
        raise Exit(code=code)


@command(help={"args": "options for benchmarks/compare_methods.py, e.g. \"--base runs/wide/checkpoint.pt --out "
                    "benchmarks/results/compare_wide\" (see its --help)"})
def compare(c, args=""):
    """Every pruning method at 30/50/70% fewer MACs from one base: top-1 before/after fine-tuning, size, latency."""
    _run_script(c, "compare_methods.py", args)


@command(help={"args": "options for benchmarks/sweep_thresholds.py, e.g. \"--criteria cosine --thresholds 0.6,0.8\""})
def sweep(c, args=""):
    """SCP thresholds 0.05..0.95 per criterion: top-1, MACs and per-layer channels, with the report's plots."""
    _run_script(c, "sweep_thresholds.py", args)


@command(help={"args": "extra pytest arguments, e.g. \"-k data -x\"",
               "workers": "test processes (default 2, the cores CI has; 0: all in this one)"})
def test(c, args="", workers="2"):
    """Run the test suite; 'no tests collected' is a failure, not a pass."""
    processes = whole(workers, "workers")
    if processes < 0:
        raise PrunedroidError(f"--workers is a number of test processes, 0 or more; got {processes}")
    # A test file stays in one process (--dist loadfile): its module fixtures (exports, trained bases) are built once.
    # Files are handed out in collection order, longest first (tests/conftest.py LONGEST_FILES).
    parallel = ["-n", str(processes), "--dist", "loadfile", "--no-loadscope-reorder"] if processes > 0 \
        else ["-p", "no:xdist"]
    # The slowest tests are listed after the verdict: where a run's minutes went, in every log (CI's included).
    code = _run(c, sys.executable, "-m", "pytest", *parallel, "--durations=15", args=args)
    if code == 5:
        raise Exit("error: pytest collected no tests", code=5)
    if code:
        raise Exit(code=code)
