"""Hostile names, files and devices: nothing outside its folder is touched, nothing is run, no wrong number is
reported. One test per finding of the audit (issue 24), each failing on the code before its fix."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import ROOT, copy_export, run_invoke, run_invoke_each, save_untrained_base

from prunedroid.android.device import PACKAGE, Adb, bench_device
from prunedroid.deploy.export import export_checkpoint
from prunedroid.deploy.sidecar import Sidecar
from prunedroid.errors import PrunedroidError
from prunedroid.files import atomic_paths, file_sha256
from prunedroid.flow import RUN_KIND, RUN_RECORD, _check_run_folder, prune_stage, run_options, run_pipeline
from prunedroid.measure.bench import benchmark, read_report
from prunedroid.measure.latency import LatencyTable, where_measured
from prunedroid.models import vgg16_spec
from prunedroid.pruned import prune_checkpoint
from prunedroid.pruning import Budget, resolve_method
from prunedroid.pruning.budget import trim_to_target
from prunedroid.training.checkpoint import KIND, Checkpoint
from prunedroid.training.train import make_config, train
from tests.conftest import vgg_graph
from tests.test_prune import trained_like


def one_line_exit_2(result: subprocess.CompletedProcess, message: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert re.search(message, lines[0]), lines[0]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: what a test compares before and after."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def edit_sidecar(path: Path, **changes) -> Path:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return path


def refresh(sidecar: Path, kind: str) -> None:
    """Records the `kind` file's present size and hash in the sidecar, as a hostile sidecar would."""
    target = sidecar.parent / json.loads(sidecar.read_text())[kind]
    edit_sidecar(sidecar, **{f"{kind}_bytes": target.stat().st_size, f"{kind}_sha256": file_sha256(target)})


# --- 1. names that reach outside their folder --------------------------------------------------------------------

def _pipeline(name: str, runs: Path, **options):
    config = make_config("smoke", {})
    method, budget = resolve_method("l1", {}, Budget.of(mac_reduction=0.5))
    return run_pipeline(name, config, make_config("smoke", {}, finetune=True), method, budget, None,
                        runs_dir=runs, progress=False, **options)


@pytest.mark.parametrize("name", ["..", ".", "", "/tmp/elsewhere", "a/b", "../runs", ".hidden", "x\ny"])
def test_a_run_name_that_is_not_a_plain_name_is_refused(tmp_path, name):
    runs = tmp_path / "runs"
    (runs / "other").mkdir(parents=True)
    (runs / "other" / "keep.txt").write_text("another run")
    (tmp_path / "decoy.txt").write_text("mine")
    before = tree(tmp_path)
    with pytest.raises(PrunedroidError, match="--name must be a plain name"):
        _pipeline(name, runs, overwrite=True)
    assert tree(tmp_path) == before


def test_overwrite_from_the_command_line_removes_nothing_outside_the_runs(tmp_path):
    runs = tmp_path / "runs"
    (runs / "other").mkdir(parents=True)
    (runs / "other" / "keep.txt").write_text("another run")
    (tmp_path / "decoy.txt").write_text("mine")
    before = tree(tmp_path)
    for name in ("..", str(tmp_path)):
        one_line_exit_2(run_invoke("pipeline", "--preset", "smoke", "--overwrite", "--name", name, "--runs-dir",
                                   str(runs), cwd=tmp_path, timeout=120), "--name must be a plain name")
    assert tree(tmp_path) == before


def test_overwrite_and_resume_touch_only_folders_the_pipeline_made(tmp_path):
    runs = tmp_path / "runs"
    (runs / "photos").mkdir(parents=True)
    (runs / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    (runs / "link").symlink_to(target, target_is_directory=True)
    before = tree(tmp_path)
    for name in ("photos", "link"):
        for option in ("overwrite", "resume"):
            with pytest.raises(PrunedroidError, match=f"not a run folder of `invoke pipeline` \\(no {RUN_RECORD}"):
                _pipeline(name, runs, **{option: True})
    assert tree(tmp_path) == before and (runs / "link").is_symlink()


def test_export_names_stay_inside_the_output_folder(tmp_path, vgg_exports, synthetic_data):
    out = tmp_path / "a" / "out"
    checkpoint = vgg_exports["base"].parent.parent / "base.pt"
    for name in ("../escaped", "/tmp/escaped", "..", "sub/model"):
        with pytest.raises(PrunedroidError, match="--name must be a plain name"):
            export_checkpoint(checkpoint, synthetic_data.test, out, name)
    assert not (tmp_path / "a").exists()
    one_line_exit_2(run_invoke("export", "--checkpoint", str(checkpoint), "--out", str(out), "--name", "../escaped",
                               cwd=tmp_path), "--name must be a plain name")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- 2. adb: one shell line on the device ----------------------------------------------------------------------

def planted(state: Path) -> list[Path]:
    return [p for p in state.rglob("PWNED*")]


def test_the_fake_adb_runs_one_shell_line_as_the_device_does(phone, tmp_path):
    """The control: an unquoted line does run a second command on the (fake) device, so a test can catch one."""
    adb = Adb(str(tmp_path / "bin" / "adb"), env=phone)
    adb.run("shell", "echo", "hello;touch", "PWNED")
    assert planted(tmp_path / "state")
    adb.run("install", "-r", "app.apk")
    missing = adb.shell("run-as", PACKAGE, "cp", "/data/local/tmp/x", "files/x", check=False)
    assert missing.returncode == 1 and "No such file or directory" in missing.stderr  # no files/ after install


@pytest.mark.parametrize("word", ["x;touch${IFS}PWNED;#", "$(touch PWNED2)", "`touch PWNED3`", "x' ; touch PWNED4 '",
                                  "a b\ntouch PWNED5"])
def test_every_word_reaches_the_device_shell_quoted(phone, tmp_path, word):
    adb = Adb(str(tmp_path / "bin" / "adb"), env=phone)
    adb.run("install", "-r", "app.apk")
    result = adb.shell("run-as", PACKAGE, "cat", f"files/{word}", check=False)
    assert result.returncode == 1 and "No such file or directory" in result.stderr
    assert not planted(tmp_path / "state")


def test_a_hostile_model_name_never_reaches_the_phone(phone, tmp_path, vgg_exports):
    hostile = copy_export(vgg_exports["base"], tmp_path / "models", "x;touch${IFS}PWNED;#")
    apk = tmp_path / "app-debug.apk"
    apk.write_bytes(b"PK")
    with pytest.raises(PrunedroidError, match="letters, digits and . _ - only"):
        bench_device([hostile], {"executorch": apk}, warmup=1, runs=2, env=phone)
    assert not planted(tmp_path / "state") and not (tmp_path / "state" / "fs").exists()


# --- 3. files a sidecar names ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["/etc/passwd", "../elsewhere/model.ptl"])
def test_a_sidecar_cannot_send_or_stage_a_file_outside_its_folder(phone, tmp_path, vgg_exports, name):
    from prunedroid.android.build import check_model

    sidecar = copy_export(vgg_exports["base"], tmp_path / "models")
    (tmp_path / "elsewhere").mkdir()
    shutil.copyfile(vgg_exports["base"].with_suffix(".ptl"), tmp_path / "elsewhere" / "model.ptl")
    target = (sidecar.parent / name).resolve()
    edit_sidecar(sidecar, ptl=name, ptl_bytes=target.stat().st_size, ptl_sha256=file_sha256(target))
    apk = tmp_path / "app-debug.apk"
    apk.write_bytes(b"PK")
    with pytest.raises(PrunedroidError, match="must be a plain name"):  # the .ptl it names runs on the lite build
        bench_device([sidecar], {"lite": apk}, warmup=1, runs=2, env=phone)
    assert not (tmp_path / "state" / "fs").exists()  # nothing pushed
    with pytest.raises(PrunedroidError, match="must be a plain name"):
        check_model(sidecar, runtime="lite")


# --- 4. sizes ----------------------------------------------------------------------------------------------------

def test_a_checkpoint_with_a_compressed_or_unknown_entry_is_refused(tmp_path):
    bomb = save_untrained_base(tmp_path / "bomb.pt")
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/data/99", bytes(64 << 20))  # 64 MiB of zeros in about 64 KB
    assert bomb.stat().st_size < 2 << 20
    with pytest.raises(PrunedroidError, match="compressed or oversized entries"):
        Checkpoint.load(bomb)
    extra = tmp_path / "extra.pt"
    model_state = torch.load(save_untrained_base(tmp_path / "base.pt"), weights_only=True)
    torch.save({**model_state, "payload": torch.zeros(10)}, extra)
    with pytest.raises(PrunedroidError, match="payload: not part of this format"):
        Checkpoint.load(extra)
    one_line_exit_2(run_invoke("evaluate", "--checkpoint", str(bomb), cwd=tmp_path), "compressed")


def test_huge_json_files_are_refused_without_being_read(tmp_path, vgg_exports):
    """Sparse files: 8 GiB on paper, no disk used; each reader refuses them by size."""
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as handle:
        handle.truncate(8 << 30)
    with pytest.raises(PrunedroidError, match="larger than 16 MiB"):
        Sidecar.read(huge)
    with pytest.raises(PrunedroidError, match="larger than 16 MiB"):
        LatencyTable.load(huge, measure=lambda shape: 1.0)
    with pytest.raises(PrunedroidError, match="larger than 16 MiB"):
        read_report(huge)
    with open(tmp_path / "huge.pt", "wb") as handle:
        handle.truncate(5 << 30)
    with pytest.raises(PrunedroidError, match="larger than 4 GiB"):
        Checkpoint.load(tmp_path / "huge.pt")


# --- 5. resume with other options --------------------------------------------------------------------------------

def test_resuming_a_run_with_other_options_names_them(tmp_path):
    runs = tmp_path / "runs"
    (runs / "r").mkdir(parents=True)
    config, finetune = make_config("smoke", {}), make_config("smoke", {}, finetune=True)
    method, budget = resolve_method("l1", {}, Budget.of(mac_reduction=0.5))
    (runs / "r" / RUN_RECORD).write_text(json.dumps(
        {"kind": RUN_KIND, "options": run_options(config, finetune, method, budget, None, None)}))
    before = tree(tmp_path)
    scp, _ = resolve_method("scp", {}, Budget.of(mac_reduction=0.5))
    with pytest.raises(PrunedroidError, match=r"cannot resume .* other options \(method: the run has \"l1\", now "
                                            r"\"scp\"; options: .*"):
        run_pipeline("r", config, finetune, scp, budget, None, runs_dir=runs, resume=True, progress=False)
    base = save_untrained_base(tmp_path / "base.pt")
    with pytest.raises(PrunedroidError, match=r"base: the run has null, now .*train: the run has"):
        run_pipeline("r", config, finetune, method, budget, None, base=base, runs_dir=runs, resume=True,
                     progress=False)
    with pytest.raises(PrunedroidError, match=r"budget: the run has .*0\.5.*, now .*0\.6"):
        run_pipeline("r", config, finetune, method, Budget.of(mac_reduction=0.6), None, runs_dir=runs, resume=True,
                     progress=False)
    assert tree(tmp_path) == {**before, "base.pt": base.read_bytes()}
    elsewhere = [make_config("smoke", {"device": "cpu", "threads": "1"}, finetune=flag) for flag in (False, True)]
    # where it runs may change
    _check_run_folder(runs / "r", run_options(*elsewhere, method, budget, None, None), resume=True)


def test_finetune_resume_with_another_checkpoint_is_refused(tmp_path, synthetic_data):
    config = make_config("smoke", {"epochs": "1", "train_limit": "128", "test_limit": "100"}, finetune=True)
    first = Checkpoint(arch=vgg16_spec(0.0625).to_dict(), state_dict=trained_like(vgg16_spec(0.0625), 0).state_dict())
    other = Checkpoint(arch=first.arch, state_dict=trained_like(vgg16_spec(0.0625), 1).state_dict())
    train(config, synthetic_data, tmp_path / "ft", progress=False, init=first)
    again = train(config, synthetic_data, tmp_path / "ft", resume=True, progress=False, init=first)
    assert again.epoch == 1
    with pytest.raises(PrunedroidError, match="--checkpoint: the run fine-tunes other weights"):
        train(config, synthetic_data, tmp_path / "ft", resume=True, progress=False, init=other)


def test_a_pipeline_on_a_given_base_reports_the_bases_recipe_and_refuses_another_base(tmp_path, cifar_dir,
                                                                                         synthetic_data):
    base = tmp_path / "base"
    trained = train(make_config("smoke", {"epochs": "1", "lr": "0.02"}), synthetic_data, base, progress=False)
    assert trained.recipe["lr"] == 0.02
    runs = tmp_path / "runs"
    args = ("pipeline", "--preset", "smoke", "--name", "on-base", "--base", str(base / "checkpoint.pt"),
            "--data-dir", str(cifar_dir), "--bench-runs", "10", "--bench-processes", "1", "--quantize", "none",
            "--allocation", "uniform", "--round-to", "1", "--runs-dir", str(runs))  # no curves to measure: faster
    result = run_invoke(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    report = (runs / "on-base" / "report.md").read_text()
    assert "(training recipe: width 0.0625, epochs 1, batch_size 64, lr 0.02," in report  # the preset's lr is 0.05
    other = save_untrained_base(tmp_path / "other.pt")
    one_line_exit_2(run_invoke(*args[:6], str(other), *args[7:], "--resume"), r"cannot resume .* \(base: the run")


# --- 6. a sidecar and its files out of step ----------------------------------------------------------------------

def test_files_out_of_step_with_their_sidecar_are_refused(tmp_path, vgg_exports, synthetic_data):
    """A kill between export's renames leaves the new model files beside the old sidecar; a sidecar whose checkpoint
    was swapped would mix two models in one row. bench refuses both before any runtime loads a file."""
    folder = tmp_path / "out"
    sidecar = copy_export(vgg_exports["base"], folder, "model")
    old_sidecar = sidecar.read_text()
    copy_export(vgg_exports["small"], folder, "model")  # the new export's files ...
    sidecar.write_text(old_sidecar)  # ... under the old sidecar
    with pytest.raises(PrunedroidError, match="is not the file model.json describes"):
        benchmark([sidecar], synthetic_data.test, runs=10, warmup=0)
    sidecar = copy_export(vgg_exports["base"], tmp_path / "swapped", "model")
    small_checkpoint = vgg_exports["small"].parent.parent / "small.pt"
    edit_sidecar(sidecar, checkpoint=str(small_checkpoint))
    with pytest.raises(PrunedroidError, match="has changed since the export"):
        benchmark([sidecar], synthetic_data.test, runs=10, warmup=0)
    edit_sidecar(sidecar, checkpoint_sha256=file_sha256(small_checkpoint))
    with pytest.raises(PrunedroidError, match="describes another architecture than its checkpoint"):
        benchmark([sidecar], synthetic_data.test, runs=10, warmup=0)


def test_the_sidecar_lands_last_and_temporaries_of_a_killed_export_are_removed(tmp_path, vgg_exports, synthetic_data,
                                                                              monkeypatch):
    from prunedroid import files

    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".model.pte.0123abcd.tmp", out / ".model.json.deadbeef.tmp"]
    for path in stale:
        path.write_bytes(b"left by a killed export")
    (out / ".notes.txt").write_text("a user's hidden file")
    landed = []
    replace = os.replace
    monkeypatch.setattr(files.os, "replace", lambda source, target: (landed.append(Path(target).name),
                                                                     replace(source, target)))
    export_checkpoint(vgg_exports["base"].parent.parent / "base.pt", synthetic_data.test, out, "model")
    assert landed == ["model.ptl", "model.onnx", "model.pte", "model.json"]
    assert not any(p.exists() for p in stale) and (out / ".notes.txt").exists()
    with pytest.raises(RuntimeError), atomic_paths([tmp_path / "a", tmp_path / "b"]) as (first, second):
        first.write_text("1")
        raise RuntimeError("a failure before the second file is written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- 7. two models of one name -----------------------------------------------------------------------------------

def test_two_sidecars_with_one_name_are_refused(phone, tmp_path, vgg_exports, synthetic_data):
    first = copy_export(vgg_exports["base"], tmp_path / "a", "model")
    second = copy_export(vgg_exports["small"], tmp_path / "b", "model")
    with pytest.raises(PrunedroidError, match="names two models called 'model'"):
        benchmark([first, second], synthetic_data.test, runs=10, warmup=0)
    apk = tmp_path / "app-debug.apk"
    apk.write_bytes(b"PK")
    with pytest.raises(PrunedroidError, match="names two models called 'model'"):
        bench_device([first, second], {"executorch": apk}, warmup=1, runs=2, env=phone)


# --- 8. latency tables -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["NaN", "1e308", "-1", "0", "Infinity", "\"fast\""])
def test_a_tampered_latency_table_is_refused(tmp_path, value):
    table = tmp_path / "latency-table.json"
    table.write_text(f'{{"where": {json.dumps(where_measured("onnxruntime"))}, "ms": {{"conv 3x32x32->4": {value}}}}}')
    with pytest.raises(PrunedroidError, match="is not a latency table"):
        LatencyTable.load(table, measure=lambda shape: 1.0)


def test_a_zero_or_nan_measurement_stops_the_search():
    graph = vgg_graph(vgg16_spec(0.0625))
    for measured in (0.0, math.nan, -2.0):
        with pytest.raises(PrunedroidError, match="not a latency"):
            LatencyTable(measure=lambda shape, ms=measured: ms).model_ms(graph, graph.channels)
    with pytest.raises(PrunedroidError, match="could not reach a 50.0%"):
        trim_to_target(graph, list(graph.channels), Budget.of(mac_reduction=0.5), [1] * 13, lambda i, c: 0,
                       reduction=lambda counts: math.nan)


def test_prune_with_a_tampered_or_foreign_latency_table_is_one_line(tmp_path, cifar_dir):
    """The host's own table (found by name in the working directory) with a NaN timing, and a phone's table given
    with --latency-table that is missing, holds a negative timing or was measured on a host: each is one line, and
    nothing is written (the phone's table is read, never written)."""
    base = save_untrained_base(tmp_path / "base.pt")
    cases = [("latency-table-executorch.json", '{"where": {}, "ms": {"conv 3x32x32->4": NaN}}',
              "is not a latency table"),
             ("phone.json", None, "No such file or directory"),
             ("phone.json", '{"where": {"device": {"model": "x"}}, "ms": {"conv 3x32x32->4": -1}}',
              "is not a latency table"),
             ("phone.json", '{"where": {"runtime": "onnxruntime 1.0", "cpu": "x"}, "ms": {}}',
              "was not measured on a device")]
    calls = []
    for i, (name, table, _) in enumerate(cases):
        cwd = tmp_path / str(i)
        cwd.mkdir()
        if table is not None:
            (cwd / name).write_text(table)
        given = ("--latency-table", str(cwd / name)) if name == "phone.json" else ()
        calls.append((("prune", "--checkpoint", str(base), "--allocation", "latency", "--latency-reduction", "0.5",
                       *given, "--data-dir", str(cifar_dir), "--out", str(cwd / "pruned")), cwd))
    before = tree(tmp_path)
    for (_, _, message), result in zip(cases, run_invoke_each(calls)):
        one_line_exit_2(result, message)
    assert tree(tmp_path) == before
    assert not any((tmp_path / str(i) / "pruned").exists() for i in range(len(cases)))  # not even an empty folder


# --- 9. numbers from a phone or a sidecar ------------------------------------------------------------------------

@pytest.mark.parametrize("result, message", [
    ('{"model": "m", "model_bytes": 10, "runs": 2, "threads": 1, "latency_ms": {"median": NaN, "p90": 1, "min": 1, '
     '"max": 1}}', "not what this version writes"),
    ('{"model": "m", "model_bytes": 10, "runs": 2, "threads": 1, "latency_ms": {"median": -1, "p90": 1, "min": 1, '
     '"max": 1}}', "not what this version writes"),
    ('{"model": "m", "model_bytes": 10, "runs": 2, "threads": 1, "latency_ms": {"median": 0, "p90": 0, "min": 0, '
     '"max": 0}}', "not what this version writes"),
    ('{"model": "m", "model_bytes": -5, "runs": 2, "threads": 1, "latency_ms": {"median": 1, "p90": 1, "min": 1, '
     '"max": 1}}', "not what this version writes"),
    ("{not json", "is not JSON"), ("[1, 2]", "not what this version writes"), ("12", "not what this version writes"),
])
def test_broken_numbers_from_the_phone_are_refused(phone, tmp_path, vgg_exports, result, message):
    apk = tmp_path / "app-debug.apk"
    apk.write_bytes(b"PK")
    with pytest.raises(PrunedroidError, match=message):
        bench_device([vgg_exports["base"]], {"executorch": apk}, warmup=1, runs=2,
                     env={**phone, "FAKE_ADB_RESULT": result})


@pytest.mark.parametrize("changes, problem", [
    ({"macs": 1e308}, "macs: a whole number"), ({"params": -5}, "params: a whole number"),
    ({"test_top1": float("nan")}, "not valid JSON"), ({"std": [0, 1, 1]}, "std: one finite number"),
    ({"classes": "cat"}, "classes: a list"), ({"input_shape": [1, 3, 32]}, "input_shape"),
    ({"ptl_sha256": "0" * 63}, "ptl_sha256"), ({"executorch": {"version": "garbage"}}, "executorch.version"),
    ({"int8": {"pte": "m-int8.pte"}}, "int8.pte_bytes"), ({"ptl": 7}, "ptl: a file name"),
])
def test_a_sidecar_with_absurd_values_is_refused(tmp_path, vgg_exports, changes, problem):
    sidecar = edit_sidecar(copy_export(vgg_exports["base"], tmp_path), **changes)
    with pytest.raises(PrunedroidError, match=re.escape(problem)):
        Sidecar.read(sidecar)


def test_a_bare_number_or_list_is_not_a_sidecar(tmp_path):
    for text in ("12", "[1]", "null", '"model.ptl"'):
        (tmp_path / "m.json").write_text(text)
        with pytest.raises(PrunedroidError, match="the whole file: a JSON object"):
            Sidecar.read(tmp_path / "m.json")


# --- 10. pruning a pruned model ----------------------------------------------------------------------------------

def test_pruning_a_pruned_checkpoint_keeps_the_first_record(synthetic_data):
    model = trained_like(vgg16_spec(0.125))
    base = Checkpoint(arch=model.spec.to_dict(), state_dict=model.state_dict(), metrics={"test": {"top1": 0.5}})
    once = prune_checkpoint(base, "l1", Budget.of(mac_reduction=0.5))
    twice = prune_checkpoint(once, "l1", Budget.of(mac_reduction=0.5))
    report = twice.pruning
    assert report["previous"] == once.pruning
    assert report["original"] == {"macs": once.pruning["macs_before"], "params": once.pruning["params_before"]}
    assert abs(report["mac_reduction"] - 0.5) < 0.02 and abs(report["mac_reduction_from_original"] - 0.75) < 0.02
    thrice = prune_checkpoint(twice, "l1", Budget.of(ratio=0.1))
    assert thrice.pruning["original"] == report["original"]


# --- 11. files that would crash a runtime --------------------------------------------------------------------------

CRASH_FINDER = """
import re, sys
from pathlib import Path
from prunedroid.deploy import pte
program = Path(sys.argv[1]).read_bytes()
for found in re.finditer(rb"[0-9a-f]{64}", program):  # ExecuTorch's named-data keys
    crafted = program[:found.start() + 10] + b"\\xdd" + program[found.start() + 11:]
    Path(sys.argv[2]).write_bytes(crafted)
    try:
        pte.load_pte(Path(sys.argv[2]))
    except Exception:
        pass
Path(sys.argv[2]).unlink()
"""


def test_a_pte_that_aborts_the_runtime_is_refused_not_run(tmp_path, vgg_exports, synthetic_data):
    """A crafted program whose key holds a byte that is not UTF-8 makes ExecuTorch's loader call std::terminate; a
    child process finds one, and bench and build-apk must report it in one line rather than die of SIGABRT."""
    from prunedroid.android.build import check_model

    sidecar = copy_export(vgg_exports["base"], tmp_path / "m")
    crafted = sidecar.with_suffix(".pte")
    finder = subprocess.run([sys.executable, "-c", CRASH_FINDER, str(vgg_exports["base"].with_suffix(".pte")),
                             str(crafted)], cwd=ROOT, capture_output=True, timeout=300, check=False)
    assert finder.returncode < 0, "no crafted program crashed ExecuTorch: the control no longer holds"
    refresh(sidecar, "pte")
    with pytest.raises(PrunedroidError, match=r"model.pte|base.pte"):
        check_model(sidecar)
    with pytest.raises(PrunedroidError, match="cannot be run by its runtime: it crashed its runtime"):
        benchmark([sidecar], synthetic_data.test, runs=10, warmup=0)


@pytest.mark.parametrize("kind, content", [("pte", b"random bytes, no program"), ("ptl", b"PK\x03\x04 not a zip"),
                                           ("onnx", b"\x08\x07 truncated protobuf"), ("ptl", b"")])
def test_random_or_truncated_model_files_are_one_line(tmp_path, vgg_exports, synthetic_data, kind, content):
    sidecar = copy_export(vgg_exports["base"], tmp_path / "m")
    bad = sidecar.with_suffix(f".{kind}")
    bad.write_bytes(content)
    if content:
        refresh(sidecar, kind)
    with pytest.raises(PrunedroidError, match=r"not a \.pte file|cannot be run by its runtime|is not the file|a size"):
        benchmark([sidecar], synthetic_data.test, runs=10, warmup=0)


def test_a_broken_report_is_refused_before_the_phone_is_used(phone, tmp_path, vgg_exports, monkeypatch):
    for key, value in phone.items():
        monkeypatch.setenv(key, value)
    report = tmp_path / "bench"
    apk = tmp_path / "app-debug.apk"
    apk.write_bytes(b"PK")
    for text in ("{broken", '{"rows": [{"model": "m"}]}', "[]", '{"rows": [{"model": "m", "runtime": "r", "macs": '
                 'NaN}]}'):
        report.with_suffix(".json").write_text(text)
        result = run_invoke("bench-device", "--models", str(vgg_exports["base"]), "--apk", str(apk), "--report",
                            str(report), cwd=tmp_path)
        one_line_exit_2(result, "not a report of `invoke bench`|not valid JSON")
    assert not (tmp_path / "state" / "installed").exists()


# --- 12. checkpoints with odd records ------------------------------------------------------------------------------

def test_checkpoints_with_odd_records_are_pruned_or_refused_in_one_line(tmp_path, synthetic_data, capsys):
    unfinished = save_untrained_base(tmp_path / "unfinished.pt")
    checkpoint = torch.load(unfinished, weights_only=True)
    torch.save({**checkpoint, "metrics": {}}, unfinished)
    report = prune_stage(unfinished, tmp_path / "p1", "l1", Budget.of(mac_reduction=0.5), synthetic_data, 0)
    # measured now, on the images the pruned model is scored on, not read from the record
    assert 0 <= report["parent_test_top1"] <= 1 and report["parent_test_images"] == len(synthetic_data.test)
    assert f"(base {report['parent_test_top1']:.2%})" in capsys.readouterr().out
    bare = tmp_path / "bare.pt"
    torch.save({key: value for key, value in checkpoint.items() if key not in ("recipe", "data")}, bare)
    pruned = prune_checkpoint(Checkpoint.load(bare), "l1", Budget.of(mac_reduction=0.5))
    assert pruned.recipe == {} and pruned.data == {}
    for changes, problem in (({"metrics": None}, "metrics: an object"),
                             ({"data": {"holdout_images": "abc"}}, "data.holdout_images"),
                             ({"metrics": {"test": {"top1": float("nan")}}}, "metrics.test.top1"),
                             ({"kind": KIND, "recipe": [1]}, "recipe: an object")):
        odd = tmp_path / "odd.pt"
        torch.save({**checkpoint, **changes}, odd)
        with pytest.raises(PrunedroidError, match=re.escape(problem)):
            Checkpoint.load(odd)
    one_line_exit_2(run_invoke("prune", "--checkpoint", str(odd), "--ratio", "0.5", cwd=tmp_path), "recipe")


# --- 13. a full disk ---------------------------------------------------------------------------------------------

@pytest.fixture
def tiny_disk(tmp_path):
    """A real 256 KiB file system (tmpfs), where writes fail with ENOSPC as on a full disk; skipped where this user
    may not mount one."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True,
                      check=False).returncode:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tiny_disk, tmp_path, vgg_exports, cifar_dir):
    checkpoint = vgg_exports["base"].parent.parent / "base.pt"  # its files are about 300 KB: more than the disk holds
    one_line_exit_2(run_invoke("export", "--checkpoint", str(checkpoint), "--out", str(tiny_disk / "export"),
                               "--data-dir", str(cifar_dir), cwd=tmp_path), "the disk is full")
    assert list(tiny_disk.iterdir()) == []  # no temporaries, no half files, no folder
    result = run_invoke("train", "--preset", "smoke", "--width", "0.125", "--epochs", "1", "--data-dir",
                        str(cifar_dir), "--out", str(tiny_disk / "run"), cwd=tmp_path)
    one_line_exit_2(result, "the disk is full")
    assert "Traceback" not in result.stderr and list(tiny_disk.iterdir()) == []
    from prunedroid.measure.report import write_results

    (tiny_disk / "bench.json").write_text("{}")
    with pytest.raises(OSError):
        write_results(tiny_disk / "bench", {"rows": [], "padding": "x" * (300 << 10)}, "t", "table")
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["bench.json"]
    assert (tiny_disk / "bench.json").read_text() == "{}"


# --- 14. dependencies ----------------------------------------------------------------------------------------------

def test_no_dependency_needs_more_than_the_lower_bounds_pyproject_declares():
    """pyproject's lower bounds must be installable beside its pins: numpy>=1.26 was declared while the pinned
    executorch needs numpy 2 (and the data reader uses numpy._core), so the bound promised what never ran."""
    from importlib import metadata

    import tomllib
    from packaging.requirements import Requirement
    from packaging.version import Version

    declared, pinned = {}, []
    for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(line)
        floors = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
        declared[requirement.name.lower().replace("_", "-")] = max(floors) if floors else None
        pinned += [requirement.name for s in requirement.specifier if s.operator == "=="]
    assert pinned, "pyproject pins nothing: this test reads the pins' own requirements"
    needing_more = []
    for dist in map(metadata.distribution, pinned):  # fixed by the pins, so the answer cannot drift
        for line in dist.requires or []:
            requirement = Requirement(line)
            name = requirement.name.lower().replace("_", "-")
            if name not in declared or declared[name] is None or (requirement.marker and not
                                                                   requirement.marker.evaluate({"extra": ""})):
                continue
            floors = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
            if floors and max(floors) > declared[name]:
                needing_more.append(f"{dist.metadata['Name']} needs {name} {requirement.specifier}, pyproject "
                                    f"says >= {declared[name]}")
    assert not needing_more, needing_more
