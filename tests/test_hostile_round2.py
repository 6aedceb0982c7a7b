"""Hostile input, round two (issue 43): each test is one finding, tried as a hostile or unlucky user would, and
each failed on the code before its fix. Items 1-5 also run through the real command line."""
from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, copy_export, run_invoke, run_invoke_each, save_untrained_base, write_batch
from torch import nn

import prunedroid
from prunedroid import data as cifar
from prunedroid.android.device import Device, bench_device, parse_devices, pick_device
from prunedroid.deploy.sidecar import Sidecar
from prunedroid.errors import PrunedroidError
from prunedroid.files import folder_lock, plain_name, read_json
from prunedroid.flow import RUN_KIND, RUN_RECORD, evaluation_set, prune_stage, run_options, run_pipeline
from prunedroid.measure.bench import add_device_rows, benchmark, check_timing
from prunedroid.models import vgg16_spec
from prunedroid.pruning import Budget, SCPConfig, resolve_method
from prunedroid.training.checkpoint import Checkpoint
from prunedroid.training.train import evaluate, make_config, train
from tests.test_hostile import one_line_exit_2, tree
from tests.test_prune import trained_like

# --- 1-3. what a run folder holds, and what lies below it --------------------------------------------------------


def _run_folder(runs: Path, name: str, options: dict | None = None) -> Path:
    """A folder as `invoke pipeline` marks its runs (its run.json), with `options` recorded."""
    run = runs / name
    run.mkdir(parents=True)
    (run / RUN_RECORD).write_text(json.dumps({"kind": RUN_KIND, "options": options or {}}))
    return run


def test_overwriting_a_run_that_holds_its_own_base_is_refused_before_anything_is_removed(tmp_path, cifar_dir):
    runs = tmp_path / "runs"
    run = _run_folder(runs, "twin3")
    (run / "base").mkdir()
    base = save_untrained_base(run / "base" / "checkpoint.pt")
    before = tree(tmp_path)
    result = run_invoke("pipeline", "--preset", "smoke", "--name", "twin3", "--base", str(base), "--overwrite",
                        "--runs-dir", str(runs), "--data-dir", str(cifar_dir), "--quantize", "none", cwd=tmp_path)
    one_line_exit_2(result, r"--base .*inside the run folder .*twin3.* --overwrite would remove it")
    assert tree(tmp_path) == before


def test_an_output_folder_that_holds_an_input_is_refused(tmp_path, cifar_dir):
    folder = tmp_path / "X"
    folder.mkdir()
    base = save_untrained_base(folder / "checkpoint.pt")
    before = tree(tmp_path)
    calls = [(("prune", "--checkpoint", str(base), "--out", str(folder), "--overwrite", "--ratio", "0.5",
               "--data-dir", str(cifar_dir)), tmp_path),
             (("finetune", "--preset", "smoke", "--checkpoint", str(base), "--out", str(folder), "--overwrite",
               "--data-dir", str(cifar_dir)), tmp_path),
             (("export", "--checkpoint", str(base), "--out", str(folder), "--data-dir", str(cifar_dir)), tmp_path),
             (("train", "--preset", "smoke", "--out", str(folder), "--overwrite", "--teacher", str(base),
               "--distill-weight", "0.5", "--data-dir", str(cifar_dir)), tmp_path)]
    for result, option in zip(run_invoke_each(calls), ("--checkpoint", "--checkpoint", "--checkpoint", "--teacher")):
        one_line_exit_2(result, rf"--out {folder} holds {option} .*checkpoint.pt.*: choose an --out outside it")
    assert tree(tmp_path) == before
    with pytest.raises(PrunedroidError, match="holds --checkpoint"):  # the library's own callers too
        prune_stage(base, folder, "l1", Budget.of(ratio=0.5), cifar.load_cifar10(cifar_dir, 500, download=False), 0)
    assert tree(tmp_path) == before


def test_resume_refuses_a_run_folder_with_a_symbolic_link_below_it(tmp_path, cifar_dir):
    runs = tmp_path / "runs"
    config, finetune = make_config("smoke", {}), make_config("smoke", {}, finetune=True)
    method, budget = resolve_method("l1", {}, Budget.of(mac_reduction=0.5))
    run = _run_folder(runs, "r", run_options(config, finetune, method, budget, None, None))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "base.json").write_text("the user's own file")
    (elsewhere / ".notes.0123abcd.tmp").write_text("a hidden file of the user's")
    (run / "export").symlink_to(elsewhere, target_is_directory=True)
    before = tree(tmp_path)
    with pytest.raises(PrunedroidError, match="export is a symbolic link, and a run folder the pipeline made has none"):
        run_pipeline("r", config, finetune, method, budget, None, runs_dir=runs, resume=True, progress=False)
    one_line_exit_2(run_invoke_each([(("pipeline", "--preset", "smoke", "--name", "r", "--runs-dir", str(runs),
                                       "--data-dir", str(cifar_dir), "--resume"), tmp_path)])[0],
                    "export is a symbolic link")
    assert tree(tmp_path) == before and (run / "export").is_symlink()


def _lock_and_hold(folder: str, start, answers) -> None:
    start.wait()
    try:
        with folder_lock(folder) as held:
            entered = os.stat(held).st_ino
            time.sleep(0.05)  # the loser's refusal and clean-up happen now
            answers.put("won" if held.is_dir() and os.stat(held).st_ino == entered else "lost its folder")
    except PrunedroidError:
        answers.put("refused")


def test_two_processes_locking_one_new_folder_never_lose_the_winners_folder(tmp_path):
    context = multiprocessing.get_context("fork")
    failures = []
    for trial in range(20):
        folder = tmp_path / f"run{trial}"
        start, answers = context.Barrier(2), context.Queue()
        workers = [context.Process(target=_lock_and_hold, args=(str(folder), start, answers)) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        results = sorted(answers.get(timeout=5) for _ in workers)
        if results not in (["refused", "won"], ["won", "won"]):  # both won: one after the other
            failures.append((trial, results))
    assert not failures


def test_tasks_that_run_a_program_quote_the_interpreter_and_the_arguments(tmp_path, monkeypatch):
    hostile = tmp_path / "x;echo INJECTED;#" / "with space"
    hostile.mkdir(parents=True)
    (hostile / "python").symlink_to(sys.executable)
    site = os.pathsep.join(p for p in sys.path if p.endswith("site-packages"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), site])}
    result = subprocess.run([str(hostile / "python"), "-m", "invoke", "--search-root", str(ROOT), "test", "--workers",
                             "0", "--args", "--collect-only -q tests/test_elf.py ; echo INJECTED"], cwd=ROOT,
                            capture_output=True, text=True, env=env, timeout=300, check=False)
    assert "INJECTED" not in result.stdout.splitlines(), result.stdout[-2000:]
    assert "file or directory not found: ;" in result.stdout + result.stderr  # ';' reached pytest as a word
    from invoke.runners import Result

    import tasks

    class Recorder:  # invoke's Context.run: one shell line, answered with a Result that exited 0
        def run(self, line: str, **kwargs) -> Result:
            self.line = line
            return Result(command=line, exited=0)

    interpreter = str(hostile / "python")
    monkeypatch.setattr(tasks.sys, "executable", interpreter)
    for task, script in ((tasks.compare, "compare_methods.py"), (tasks.sweep, "sweep_thresholds.py")):
        recorder = Recorder()
        task.body(recorder, args="--out 'a b;c' $(touch PWNED)")
        assert shlex.split(recorder.line) == [interpreter, f"benchmarks/{script}", "--out", "a b;c", "$(touch",
                                              "PWNED)"]
        assert "'$(touch'" in recorder.line  # quoted: the shell runs no command substitution


# --- 6-9. wrong numbers at exit 0 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("method", ["scp", "torch-pruning"])
def test_non_finite_calibration_is_refused(bad, method):
    model = trained_like(vgg16_spec(0.0625)).eval()
    images = torch.randn(16, 3, 32, 32)
    images[3, 1, 5, 7] = bad
    calibration = [images] if method == "scp" else [(images, torch.zeros(16, dtype=torch.long))]
    options = {} if method == "scp" else {"importance": "taylor"}
    with pytest.raises(PrunedroidError, match=r"calibration batch 0 holds non-finite values \(NaN or infinity\)"):
        prunedroid.prune(model, torch.zeros(1, 3, 32, 32), method, ratio=0.5, calibration=calibration, **options)


def test_a_model_whose_activations_overflow_is_refused():
    model = trained_like(vgg16_spec(0.0625)).eval()
    with torch.no_grad():
        model.features[0].weight.mul_(1e38)
    with pytest.raises(PrunedroidError, match="non-finite activations"):
        prunedroid.prune(model, torch.zeros(1, 3, 32, 32), "scp", ratio=0.5, calibration=[torch.randn(8, 3, 32, 32)])


def test_device_rows_join_host_rows_of_the_same_file_only(tmp_path, vgg_exports, synthetic_data):
    folder = tmp_path / "export"
    sidecar = copy_export(vgg_exports["base"], folder, "m")
    host = benchmark([sidecar], synthetic_data.test.head(100), runs=5, warmup=0, rounds=5)
    copy_export(vgg_exports["small"], folder, "m")  # exported again under the same name: another model
    device = {"device": {"manufacturer": "Google", "model": "Pixel 7"}, "models": {"executorch": {"m": {
        "model_bytes": 1000, "threads": 1, "latency_ms": {"median": 1.0, "p90": 1.1, "min": 0.9, "max": 1.2}}}}}
    with pytest.raises(PrunedroidError, match=r"rows for m were measured on another export of it"):
        add_device_rows(host, device, {"m": Sidecar.read(sidecar)})
    joined = add_device_rows(host, device, {"m": Sidecar.read(copy_export(vgg_exports["base"], folder, "m"))})
    assert {row["macs"] for row in joined["rows"]} == {Sidecar.read(vgg_exports["base"]).macs}


def test_prune_compares_before_and_after_on_the_same_images_and_refuses_a_budget_rounded_away(tmp_path, cifar_dir):
    base = save_untrained_base(tmp_path / "base" / "checkpoint.pt")  # records top-1 0.1 on its own images
    data = cifar.load_cifar10(cifar_dir, 500, download=False)
    with pytest.raises(PrunedroidError, match=r"`round_to` 64 rounds the budget away .*nothing would be pruned.*"
                                              r"smaller `round_to`"):
        prune_stage(base, tmp_path / "pruned64", "l1", Budget.of(ratio=0.5, round_to=64), data, 0)
    assert not (tmp_path / "pruned64").exists()
    report = prune_stage(base, tmp_path / "pruned", "l1", Budget.of(ratio=0.5), data, 0)
    assert report["parent_test_top1"] == evaluate(Checkpoint.load(base).model(), data.test)["top1"]
    assert report["parent_test_images"] == report["test_images_after_pruning"] == len(data.test)


def test_resume_with_other_data_is_refused(tmp_path, cifar_dir):
    shifted = tmp_path / "shifted"
    shutil.copytree(cifar_dir, shifted)
    with open(shifted / cifar.TEST_FILE, "rb") as handle:
        batch = pickle.load(handle)
    batch[b"labels"] = [(label + 1) % 10 for label in batch[b"labels"]]
    with open(shifted / cifar.TEST_FILE, "wb") as handle:
        pickle.dump(batch, handle, protocol=4)
    first, other = (cifar.load_cifar10(folder, 500, download=False) for folder in (cifar_dir, shifted))
    assert first.identity != other.identity and first.identity["holdout_images"] == 500
    config, finetune = make_config("smoke", {}), make_config("smoke", {}, finetune=True)
    method, budget = resolve_method("l1", {}, Budget.of(mac_reduction=0.5))
    runs = tmp_path / "runs"
    _run_folder(runs, "r", run_options(config, finetune, method, budget, None, None, data=first.identity))
    before = tree(runs)
    with pytest.raises(PrunedroidError, match=r"cannot resume .* \(data: the run has .* \(they differ in "
                                              r"files\.test_batch\)"):
        run_pipeline("r", config, finetune, method, budget, other, runs_dir=runs, resume=True, progress=False)
    assert tree(runs) == before


# --- 10-16. crashes, hangs and raw exceptions --------------------------------------------------------------------

def test_no_training_batch_is_one_line(cifar_dir, tmp_path):
    data = cifar.load_cifar10(cifar_dir, holdout=49990, download=False)
    with pytest.raises(PrunedroidError, match=r"10 training images make no batch of 64.*--holdout"):
        train(make_config("smoke", {"train_limit": "none"}), data, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    result = run_invoke_each([(("train", "--preset", "smoke", "--batch-size", "100000", "--train-limit", "none",
                                "--data-dir", str(cifar_dir), "--out", str(tmp_path / "run")), tmp_path)])[0]
    one_line_exit_2(result, r"training images make no batch of 100000.*--batch-size")


def test_thread_and_process_counts_are_bounded():
    with pytest.raises(PrunedroidError, match=r"threads must be in 1\.\.256"):
        make_config("smoke", {"threads": "100000"})
    with pytest.raises(PrunedroidError, match=r"--threads in 1\.\.256"):
        check_timing(threads=100000, warmup=0, runs=10, rounds=5)
    with pytest.raises(PrunedroidError, match=r"at most 100 \(--processes"):
        check_timing(threads=1, warmup=0, runs=10, rounds=5, processes=100000)


@pytest.mark.parametrize("seed", [str(10**20), str(2**63 - 800), "-1", str(2**70)])
def test_seeds_out_of_range_are_one_line(seed, tmp_path):
    with pytest.raises(PrunedroidError, match=r"seed must be a whole number in 0\.\.4294967295"):
        make_config("smoke", {"seed": seed})
    model = trained_like(vgg16_spec(0.0625))
    for method in ("kmeans", "random", "l1"):
        with pytest.raises(PrunedroidError, match=r"`seed` must be a whole number in 0\.\.4294967295"):
            prunedroid.prune(model, torch.zeros(1, 3, 32, 32), method, ratio=0.5, seed=int(seed))
    base = save_untrained_base(tmp_path / "base.pt")
    one_line_exit_2(run_invoke_each([(("prune", "--checkpoint", str(base), "--method", "kmeans", "--ratio", "0.5",
                                       "--seed", seed), tmp_path)])[0], r"--seed must be a whole number in 0\.\.")


def _write_raw_batch(path: Path, labels) -> None:
    write_batch(path, 0)
    with open(path, "rb") as handle:
        batch = pickle.load(handle)
    batch[b"labels"] = labels
    with open(path, "wb") as handle:
        pickle.dump(batch, handle, protocol=4)


@pytest.mark.parametrize("labels, problem", [
    ([float("nan")] * 2 + [1] * 9998, "integers"), (["cat"] * 10000, "integers"), ([1.5] * 10000, "integers"),
    ([True] * 10000, "integers"), ([10] * 10000, r"in 0\.\.9")])
def test_batch_labels_that_are_not_class_indices_are_one_line(tmp_path, labels, problem):
    _write_raw_batch(tmp_path / "data_batch_1", labels)
    with pytest.raises(PrunedroidError, match=rf"b'labels' should be 10000 {problem}" if problem == "integers" else
                       problem) as caught:
        cifar.read_batch(tmp_path / "data_batch_1")
    assert "\n" not in str(caught.value)


def test_a_batch_file_larger_than_any_official_one_is_refused_unread(tmp_path):
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as handle:
        handle.truncate(1_500_000_000)  # sparse: no disk used, and it must not be read into memory
    with pytest.raises(PrunedroidError, match=r"1500000000 bytes, larger than any CIFAR-10 batch"):
        cifar.read_batch(path)


def _finishes(call, seconds: float = 20) -> bool:
    done = threading.Event()

    def run() -> None:
        try:
            call()
        except PrunedroidError:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(seconds)


def test_a_fifo_is_never_read_as_a_file(tmp_path):
    fifo = tmp_path / "table.json"
    os.mkfifo(fifo)
    try:
        assert _finishes(lambda: read_json(fifo, "a latency table"))
        with pytest.raises(PrunedroidError, match="is not a regular file"):
            read_json(fifo, "a latency table")
        (tmp_path / "bench.json").unlink(missing_ok=True)
        os.mkfifo(tmp_path / "bench.json")
        result = run_invoke_each([(("bench-device", "--models", str(tmp_path / "m.json"), "--report",
                                    str(tmp_path / "bench")), tmp_path)], timeout=60)[0]
        one_line_exit_2(result, "bench.json is not a regular file")
    finally:
        for name in ("table.json", "bench.json"):  # a reader left blocked on a FIFO is released
            try:
                os.close(os.open(tmp_path / name, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass


def test_a_generator_of_calibration_batches_serves_every_allocation():
    model = trained_like(vgg16_spec(0.0625)).eval()
    batches = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    example = torch.zeros(1, 3, 32, 32)
    from_list = prunedroid.prune(model, example, "scp", mac_reduction=0.3, allocation="global", calibration=batches)
    from_generator = prunedroid.prune(model, example, "scp", mac_reduction=0.3, allocation="global",
                                      calibration=(batch for batch in batches))
    assert [row["kept"] for row in from_generator.report["layers"]] == [row["kept"] for row in
                                                                       from_list.report["layers"]]


class Viewed(nn.Module):
    """A forward that reshapes channels by a fixed count: the channel graph sees the head read them out of place and
    leaves the conv whole, so nothing is left to prune."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        n, _, height, width = features.shape
        return self.head(features.view(n, 2, 4, height, width).mean((1, 3, 4)))


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor):
        out = self.conv(x).mean((2, 3))
        return {"logits": out}


def test_the_python_apis_misuses_are_one_line_naming_the_fix(tmp_path):
    model = trained_like(vgg16_spec(0.0625)).eval()
    example = torch.zeros(1, 3, 32, 32)
    misuses = [
        (lambda: prunedroid.prune(model, example, "scp", ratio=0.5, calibration=torch.randn(8, 3, 32, 32)),
         r"calibration is one tensor: pass a list of batches, e\.g\. \[images\]"),
        (lambda: prunedroid.prune(model, example, "scp", ratio=0.5, calibration=[torch.randn(8, 1, 32, 32)]),
         r"calibration batch 0 has shape \(8, 1, 32, 32\); the model takes \(N, 3, 32, 32\)"),
        (lambda: prunedroid.prune(model.to("meta"), example.to("meta"), "l1", ratio=0.5),
         r"the model's weights are on the meta device.*load real weights"),
        (lambda: prunedroid.prune(trained_like(vgg16_spec(0.0625)).double(), example.double(), "l1", ratio=0.5),
         r"float64 parameters.*model\.float\(\)"),
        (lambda: prunedroid.prune(Viewed(), example, "l1", ratio=0.5),
         r"no channel group the library can prune: conv: read or normalised by head \(reads them through a reshape "
         r"that splits or reorders channels\)"),
        (lambda: prunedroid.export(TwoOutputs(), example, tmp_path / "out", "m"),
         r"the model returns a dict, not one tensor of logits"),
    ]
    for call, message in misuses:
        with pytest.raises(PrunedroidError, match=message):
            call()
    assert not (tmp_path / "out").exists()


# --- 17-20. names, data folders, advice, the caller's model ------------------------------------------------------

@pytest.mark.parametrize("name", ["run\u0085x", "run\u2028x", "run\u202ex", "\ufeffrun", " ", "run ", " run",
                                  "run\u200bx"])
def test_names_with_invisible_or_control_characters_are_refused(name, tmp_path):
    with pytest.raises(PrunedroidError, match="--name must be a plain name"):
        plain_name(name, "--name")
    one_line_exit_2(run_invoke_each([(("pipeline", "--preset", "smoke", "--name", name, "--runs-dir",
                                       str(tmp_path / "runs")), tmp_path)])[0], "--name must be a plain name")
    assert not (tmp_path / "runs").exists()


def test_a_data_dir_that_is_no_folder_is_refused_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "download_cifar10", lambda *args, **kwargs: pytest.fail("it downloaded"))
    (tmp_path / "file").write_text("not a folder")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("file", "fifo", "loop", "dangling"):
        with pytest.raises(PrunedroidError, match=rf"{name} \(from --data-dir\) is not a folder"):
            cifar.locate_cifar10(tmp_path / name)
    assert not (tmp_path / "nowhere").exists()


def test_the_advice_in_refusals_is_advice_that_works(tmp_path, cifar_dir, monkeypatch):
    empty = cifar.Split(torch.zeros(0, 3, 32, 32, dtype=torch.uint8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(PrunedroidError) as caught:
        evaluation_set(SCPConfig(), empty)
    assert "or less" not in str(caught.value) and "train the base with --holdout" in str(caught.value)
    (tmp_path / "file").write_text("a file, not a folder")
    result = run_invoke_each([(("pipeline", "--preset", "smoke", "--name", "r", "--runs-dir",
                                str(tmp_path / "file" / "runs"), "--data-dir", str(cifar_dir)), tmp_path)])[0]
    one_line_exit_2(result, r"a file stands where a folder is needed: choose another --runs-dir")
    result = run_invoke_each([(("bench", "--models", str(tmp_path / "missing.json"), "--out",
                                str(tmp_path / "file" / "bench")), tmp_path)])[0]
    one_line_exit_2(result, r"file: a file stands where a folder is needed: choose another --out")


def test_the_callers_model_keeps_its_mode(tmp_path):
    for method in ("scp", "kmeans", "l1"):
        model = trained_like(vgg16_spec(0.0625)).train()
        result = prunedroid.prune(model, torch.zeros(1, 3, 32, 32), method, ratio=0.5,
                                  calibration=[torch.randn(8, 3, 32, 32)] if method == "scp" else None)
        assert model.training and result.model.training, method
        result = prunedroid.prune(model.eval(), torch.zeros(1, 3, 32, 32), method, ratio=0.5,
                                  calibration=[torch.randn(8, 3, 32, 32)] if method == "scp" else None)
        assert not model.training and not result.model.training, method
    model = trained_like(vgg16_spec(0.03125)).train()
    prunedroid.export(model, torch.zeros(1, 3, 32, 32), tmp_path / "out", "m")
    assert model.training


# --- 21. adb as it really behaves ---------------------------------------------------------------------------------

NO_PERMISSIONS = ("R5CT1234ABC            no permissions (missing udev rules? user is in the plugdev group); see "
                  "[http://developer.android.com/tools/device.html] usb:1-1 transport_id:5")


@pytest.mark.parametrize("line, advice", [
    (NO_PERMISSIONS, r"cannot open it: add a udev rule for it .*plugdev"),
    ("R5CT1234ABC            recovery usb:1-1 transport_id:6", r"is in recovery: reboot it into Android"),
    ("R5CT1234ABC            host usb:1-1 transport_id:7", r"is host.*not a phone this computer can run apps on"),
    ("R5CT1234ABC            sideload usb:1-1 transport_id:8", r"is in sideload: reboot it into Android")])
def test_each_device_state_gets_its_own_advice(line, advice):
    devices = parse_devices(f"List of devices attached\n{line}\n")
    assert [d.serial for d in devices] == ["R5CT1234ABC"]
    with pytest.raises(PrunedroidError, match=advice) as caught:
        pick_device(devices, None)
    assert "re-plug it" not in str(caught.value)


def test_android_serial_chooses_among_several_devices(phone, tmp_path, vgg_exports, apk):
    two = f"{phone['FAKE_ADB_DEVICES']};emulator-5554          device product:sdk model:sdk transport_id:1"
    devices = parse_devices(f"List of devices attached\n{two.replace(';', chr(10))}\n")
    assert pick_device(devices, None, {"ANDROID_SERIAL": "emulator-5554"}).serial == "emulator-5554"
    with pytest.raises(PrunedroidError, match="2 devices attached"):
        pick_device(devices, None, {})
    result = bench_device([vgg_exports["small"]], {"executorch": apk}, warmup=0, runs=2,
                          env={**phone, "FAKE_ADB_DEVICES": two, "ANDROID_SERIAL": "emulator-5554"})
    assert result["serial"] == "emulator-5554"
    assert pick_device([Device("a", "device", "")], None, {"ANDROID_SERIAL": "a"}).serial == "a"


@pytest.fixture
def apk(tmp_path) -> Path:
    path = tmp_path / "app-executorch-debug.apk"
    path.write_bytes(b"PK executorch")
    return path


def test_an_old_adb_client_that_exits_0_on_errors_waits_for_the_result(phone, vgg_exports, apk):
    result = bench_device([vgg_exports["small"]], {"executorch": apk}, warmup=0, runs=2,
                          env={**phone, "FAKE_ADB_OLD_CLIENT": "1", "FAKE_ADB_SLOW_SECONDS": "1.5"})
    assert result["models"]["executorch"]["small"]["runs"] == 2


def test_a_result_timeout_is_an_option_and_stops_the_apps_benchmark(phone, tmp_path, vgg_exports, apk):
    state = Path(phone["FAKE_ADB_STATE"])
    with pytest.raises(PrunedroidError, match=r"no result for small after 2 s.*--timeout"):
        bench_device([vgg_exports["small"]], {"executorch": apk}, warmup=0, runs=2, timeout=2,
                     env={**phone, "FAKE_ADB_SLOW_SECONDS": "3600"})
    assert (state / "force-stopped").exists() and not (state / "pending").exists()
    result = run_invoke_each([(("bench-device", "--models", str(vgg_exports["small"]), "--apk", str(apk), "--timeout",
                                "0"), tmp_path)], env=phone)[0]
    one_line_exit_2(result, r"--timeout must be at least 1 second")


def test_a_missing_result_file_on_an_old_client_is_not_a_result(phone, tmp_path):
    """The poll's `cat` of a file not yet written answers on stdout with exit 0 on an old client: not JSON to read."""
    from prunedroid.android.device import result_ready

    assert not result_ready(0, "cat: files/bench/m.json: No such file or directory\n")
    assert not result_ready(1, "")
    assert result_ready(0, '{"runs": 2}')

