"""The command line as a user meets it: help text, one-line errors with exit code 2, and `invoke test`'s exit 5."""
import dataclasses
import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_invoke, run_invoke_each, save_untrained_base

from prunedroid.errors import PrunedroidError
from prunedroid.training.checkpoint import Checkpoint
from prunedroid.training.train import TrainConfig, make_config, train


def test_train_help_documents_every_option():
    result = run_invoke("train", "--help")
    assert result.returncode == 0
    for field in dataclasses.fields(TrainConfig):
        assert f"--{field.name.replace('_', '-')}=" in result.stdout, field.name
    assert "--resume" in result.stdout and "--preset" in result.stdout


def test_listing_the_tasks_and_their_help_imports_no_torch():
    """`invoke --list` and `invoke <task> --help` read the stored generated help (prunedroid/cli_help.json) while
    its sources are unchanged: no torch import (5-7 s on 2 cores)."""
    probe = ("import sys, tasks; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'onnx', 'executorch'}))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
    listed = run_invoke("--list")
    assert listed.returncode == 0 and {"prune", "pipeline", "build-apk"} <= set(listed.stdout.split())


def test_the_stored_help_is_what_the_dataclasses_generate():
    """A stale prunedroid/cli_help.json is never used (the help is generated again), but keeps the fast path off:
    regenerate it with `python -m prunedroid.cli_help`."""
    from prunedroid import cli_help

    kept = cli_help.stored()
    assert kept is not None, "prunedroid/cli_help.json is stale: run `python -m prunedroid.cli_help`"
    generated = cli_help.generate()
    assert {key: kept[key] for key in generated if key != "sources"} == {
        key: value for key, value in generated.items() if key != "sources"}


def test_a_changed_source_makes_the_stored_help_stale(tmp_path, monkeypatch):
    from prunedroid import cli_help

    copy = tmp_path / "cli_help.json"
    kept = json.loads(cli_help.STORED.read_text())
    copy.write_text(json.dumps({**kept, "sources": {**kept["sources"], "options.py": "0" * 64}}))
    monkeypatch.setattr(cli_help, "STORED", copy)
    assert cli_help.stored() is None and cli_help.option_help()["recipe"] == kept["recipe"]


def test_bad_input_is_one_line_and_exit_2(tmp_path, cifar_dir):
    missing = run_invoke("evaluate", "--checkpoint", str(tmp_path / "nope.pt"))
    assert missing.returncode == 2 and "error: checkpoint not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad_lr = run_invoke("train", "--preset", "smoke", "--lr", "-1", "--data-dir", str(cifar_dir),
                        "--out", str(tmp_path))
    assert bad_lr.returncode == 2 and "lr must be > 0" in bad_lr.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_evaluate_reports_top1_and_cost(tmp_path, cifar_dir, synthetic_data):
    train(make_config("smoke", {"epochs": "1", "train_limit": "256", "test_limit": "100"}), synthetic_data, tmp_path,
          progress=False)
    result = run_invoke("evaluate", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--data-dir", str(cifar_dir),
                    "--test-limit", "300")
    assert result.returncode == 0, result.stderr
    assert "test top-1" in result.stdout and "on 300 images" in result.stdout and "M MACs" in result.stdout


def test_no_tests_collected_is_a_failure():
    # One file and one process (no xdist workers to start): quicker, and the exit code is pytest's either way.
    result = run_invoke("test", "--workers", "0", "--args", "-k no_test_has_this_name_zz tests/test_data.py")
    assert result.returncode == 5 and "pytest collected no tests" in result.stderr


def _tree(folder: Path) -> set[str]:
    """Every path under `folder` but the interpreter's own caches and the virtual environment; of the top-level
    runs/ only whether it exists, since runs of this checkout may be writing into it while the suite runs."""
    skip = {".git", ".venv", "__pycache__", ".pytest_cache"}
    found = set()
    for parent, folders, files in os.walk(folder):
        folders[:] = [f for f in folders if f not in skip]
        found.update(os.path.relpath(os.path.join(parent, name), folder) for name in folders + files)
        if Path(parent) == folder:
            folders[:] = [f for f in folders if f != "runs"]
    return found


def test_every_task_prints_help_and_touches_nothing(tmp_path, monkeypatch):
    """`invoke <task> --help` must print usage, exit 0 and start nothing: no download (CIFAR10_DIR points at an empty
    folder that a download would fill), no folder or file created in the project or the working directory."""
    listing = run_invoke("--list", "--list-format", "json")
    assert listing.returncode == 0, listing.stderr
    names = [t["name"] for t in json.loads(listing.stdout)["tasks"]]
    assert {"train", "evaluate", "prune", "finetune", "export", "bench", "bench-device", "pipeline"} <= set(names)
    empty_data = tmp_path / "cifar"
    empty_data.mkdir()
    monkeypatch.setenv("CIFAR10_DIR", str(empty_data))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    project_before = _tree(ROOT)
    for name, result in zip(names, run_invoke_each([((name, "--help"), cwd) for name in names])):
        assert result.returncode == 0, f"{name}: {result.stderr}"
        assert f"Usage: inv[oke] [--core-opts] {name} [--options]" in result.stdout, name
        assert "error" not in result.stderr.lower(), f"{name}: {result.stderr}"
    assert list(cwd.iterdir()) == [] and list(empty_data.iterdir()) == []
    assert _tree(ROOT) == project_before


def test_missing_required_option_is_named(tmp_path):
    required = (("evaluate", "--checkpoint"), ("prune", "--checkpoint"), ("finetune", "--checkpoint"),
                ("export", "--checkpoint"), ("bench", "--models"), ("bench-device", "--models"))
    for (task, option), result in zip(required, run_invoke_each([((task,), tmp_path) for task, _ in required])):
        assert result.returncode == 2 and f"error: missing {option}" in result.stderr, (task, result.stderr)
        assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_out_that_is_a_file_is_one_line_and_the_file_survives(tmp_path, cifar_dir):
    taken = tmp_path / "taken"
    taken.write_text("my notes")
    for args in (("train", "--preset", "smoke", "--data-dir", str(cifar_dir), "--out", str(taken)),
                 ("export", "--checkpoint", str(save_untrained_base(tmp_path / "base.pt")), "--data-dir",
                  str(cifar_dir), "--out", str(taken))):
        result = run_invoke(*args, timeout=120)
        assert result.returncode == 2, result.stderr
        assert f"error: {taken}: a file stands where a folder is needed" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert taken.read_text() == "my notes"


@pytest.mark.parametrize("code, fix", [(errno.ENOSPC, "the disk is full"), (errno.EACCES, "permission denied"),
                                       (errno.EROFS, "read-only")])
def test_a_full_disk_or_unwritable_folder_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, cifar_dir, code,
                                                                             fix):
    """What the OS says when a write fails (simulated where the disk is not full and root may write anywhere):
    the task prints one line naming the path and the fix, exits 2, and the previous checkpoint stays whole."""
    import invoke

    import tasks
    from prunedroid.training.checkpoint import Checkpoint

    base = save_untrained_base(tmp_path / "run" / "checkpoint.pt")
    before = base.read_bytes()

    write = Path.write_bytes

    def failing_write(path, data):
        write(path, b"half a checkpoint")
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(Path, "write_bytes", failing_write)
    with pytest.raises(invoke.Exit) as stopped:
        tasks.prune.body(None, checkpoint=str(base), out=str(tmp_path / "pruned"), ratio="0.5",
                         data_dir=str(cifar_dir))
    assert stopped.value.code == 2 and fix in stopped.value.message and "pruned" in stopped.value.message
    assert "\n" not in stopped.value.message
    assert base.read_bytes() == before and Checkpoint.load(base).epoch == 0
    assert not (tmp_path / "pruned").exists()  # no temp file, no half checkpoint, no folder


HOSTILE = [
    (("prune", "--method", "scp", "--knn", "0", "--ratio", "0.5"), r"k \(nearest neighbours\) must be >= 1"),
    (("prune", "--method", "scp", "--eval-images", "0", "--ratio", "0.5"), r"evaluation set \(0 images\)"),
    (("prune", "--ratio", "-1"), r"--ratio must be in \(0, 1\)"),
    (("prune", "--ratio", "1.5"), r"must be in \(0, 1\)"),
    (("prune", "--mac-reduction", "0"), r"must be in \(0, 1\)"),
    (("prune", "--ratio", "half"), "--ratio expects a finite number"),
    (("prune", "--layer-ratios", "0.5,x"), "--layer-ratios expects a finite number"),
    (("prune", "--layer-ratios", "0.5,0.5"), "needs 13 values"),
    (("prune", "--mac-reduction", "0.999"), "cannot be reached"),
    (("prune", "--ratio", "0.5", "--allocation", "global"), "shares a MAC target among layers"),
    (("prune", "--mac-reduction", "0.5", "--allocation", "best"), "unknown --allocation 'best'"),
    (("prune", "--mac-reduction", "0.9", "--allocation", "sensitivity", "--min-keep", "0.9"), "lower --min-keep"),
    (("prune", "--mac-reduction", "0.5", "--allocation", "global", "--min-keep", "0"), r"--min-keep is a fraction"),
    (("prune", "--ratio", "0.5", "--min-keep", "0.2"), "add --allocation global"),
    (("prune", "--mac-reduction", "0.5", "--candidates", "8"), "--candidates is how many allocations --allocation"),
    (("prune", "--mac-reduction", "0.5", "--allocation", "search", "--candidates", "0"), "--candidates must be a"),
    (("prune", "--mac-reduction", "0.5", "--allocation", "latency"), "--latency-reduction and --allocation latency go"),
    (("prune", "--latency-reduction", "0.5"), "--latency-reduction and --allocation latency go together"),
    (("pipeline", "--allocation", "latency", "--latency-reduction", "2"), r"must be in \(0, 1\)"),
    (("prune", "--mac-reduction", "0.5", "--latency-runtime", "onnxruntime"), "add --allocation latency"),
    (("prune", "--allocation", "latency", "--latency-reduction", "0.5", "--latency-runtime", "onnxruntime",
      "--latency-table", "phone.json"), "give it or --latency-runtime, not both"),
    (("pipeline", "--allocation", "latency", "--latency-reduction", "0.5", "--latency-runtime", "tflite"),
     "--latency-runtime is one of onnxruntime, executorch, executorch-int8"),
    (("pipeline", "--allocation", "global", "--min-keep", "x"), "--min-keep expects a finite number"),
    (("pipeline", "--layer-ratios", "0.5,0.5"), "needs 13 values"),
    (("prune", "--ratio", "0.5", "--seed", "x"), "--seed expects int"),
    (("train", "--epochs", "-1"), "epochs must be >= 1"),
    (("train", "--batch-size", "0"), "batch_size must be >= 2"),
    (("train", "--lr", "nan"), "--lr expects a finite number"),
    (("train", "--epochs", "ten"), "--epochs expects int"),
    (("train", "--model", "resnet1000"), "model must be one of vgg16, resnet56, mobilenetv2"),
    (("pipeline", "--model", "../x"), "model must be one of"),
    (("finetune", "--lr", "inf"), "--lr expects a finite number"),
    (("pipeline", "--method", "scp", "--knn", "0"), r"k \(nearest neighbours\) must be >= 1"),
    (("pipeline", "--bench-runs", "many"), "--bench-runs expects int"),
    (("pipeline", "--bench-runs", "0"), r"--runs >= 10 \(one per interleaved round\)"),
    (("pipeline", "--bench-processes", "0"), "need at least 1 timing process"),
    (("bench", "--models", "x.json", "--processes", "-1"), "need at least 1 timing process"),
    (("bench", "--models", "nowhere.json"), "no exported model at nowhere.json"),
    (("evaluate", "--test-limit", "0"), "--test-limit must be >= 1"),
    (("export", "--quantize", "int4"), "--quantize is int8 or none"),
    (("export", "--max-drop", "0.5"), "--max-drop given without --quantize int8"),
    (("pipeline", "--quantize", "int8", "--calibration-images", "-3"), "--calibration-images must be >= 1"),
    (("pipeline", "--name", "../elsewhere"), "--name must be a plain name"),
    (("export", "--name", "/tmp/model"), "--name must be a plain name"),
    (("test", "--workers", "-1"), "--workers is a number of test processes"),
    (("test", "--workers", "two"), "--workers expects int"),
]


@pytest.fixture(scope="module")
def hostile_answers(tmp_path_factory) -> tuple[Path, list]:
    """Every HOSTILE command line run once, in one interpreter, each from an empty working directory of its own
    (<folder>/<i>) with CIFAR10_DIR an empty folder (<folder>/cifar) a download would fill; a task that needs a
    checkpoint gets an untrained one. Returns the folder and the answers in HOSTILE's order."""
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "cifar").mkdir()
    checkpoint = save_untrained_base(folder / "base.pt")
    calls = []
    for i, (args, _) in enumerate(HOSTILE):
        task, *options = args
        needs_checkpoint = task in ("prune", "finetune", "evaluate", "export")
        (folder / str(i)).mkdir()
        calls.append(((task, *(["--checkpoint", str(checkpoint)] if needs_checkpoint else []), *options),
                      folder / str(i)))
    return folder, run_invoke_each(calls, env={"CIFAR10_DIR": str(folder / "cifar")})


@pytest.mark.parametrize("case", range(len(HOSTILE)), ids=lambda i: " ".join(HOSTILE[i][0]))
def test_hostile_input_is_one_line_exit_2_and_touches_nothing(hostile_answers, case):
    """Each refusal comes before any data is read or downloaded and before any folder is made."""
    folder, answers = hostile_answers
    result, message = answers[case], HOSTILE[case][1]
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert list((folder / "cifar").iterdir()) == [] and list((folder / str(case)).iterdir()) == []


def test_round_to_and_allocation_need_a_budget(tmp_path):
    checkpoint = save_untrained_base(tmp_path / "base.pt")
    calls, expected = [], []
    for extra in (("--method", "scp", "--threshold", "0.5"), ("--method", "kmeans", "--clusters", "elbow")):
        for flag, message in ((("--round-to", "8"), "--round-to rounds a budget's channel counts"),
                              (("--allocation", "global"), "--allocation shares out a budget's channel counts")):
            calls.append((("prune", "--checkpoint", str(checkpoint), *flag, *extra), tmp_path))
            expected.append(message)
    for message, result in zip(expected, run_invoke_each(calls)):
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_mac_target_from_the_command_line_gets_the_recommended_recipe_unless_told_otherwise():
    """`prune` and `pipeline` share a MAC target by request.RECOMMENDED (benchmarks/results/defaults_quick.md); what
    is typed wins, and other amounts, a latency target and a method's own choice (no budget) are left as typed."""
    import tasks
    from prunedroid.request import method_and_budget

    def budget(method="l1", default=None, **typed):
        options = {name: None for name in tasks.PRUNE_OPTIONS}  # every option the command line generates
        return method_and_budget(method, {**options, **typed}, default_budget=default)[1]

    recommended = budget(mac_reduction="0.5")
    assert (recommended.allocation, recommended.round_to) == ("sensitivity", 16)
    assert budget(default=0.5) == recommended  # the pipeline's default target gets it too
    assert (budget(mac_reduction="0.5", allocation="uniform", round_to="1").allocation, budget(
        mac_reduction="0.5", round_to="16").round_to) == ("uniform", 16)
    assert budget(mac_reduction="0.5", min_keep="0.2").min_keep == 0.2  # the recommended allocation's floor
    as_typed = budget(ratio="0.5")
    assert (as_typed.allocation, as_typed.round_to) == ("uniform", 1)
    latency = budget(default=0.5, allocation="latency")
    assert (latency.allocation, latency.round_to, latency.target) == ("latency", 1, 0.5)
    assert budget("kmeans", clusters="elbow") is None and budget("scp", threshold="0.5") is None
    search = budget(mac_reduction="0.5", allocation="search", candidates="8")
    assert (search.allocation, search.candidates, search.to_dict()["candidates"]) == ("search", 8, 8)
    with pytest.raises(PrunedroidError, match="`candidates` is how many allocations `allocation` search scores"):
        budget(mac_reduction="0.5", candidates="8")  # the recommended allocation is sensitivity, which takes none


def test_the_recommended_multiple_steps_down_on_a_narrow_model_but_a_typed_one_is_kept(capsys):
    from prunedroid.models import fresh_arch
    from prunedroid.pruning import Budget
    from prunedroid.request import fitted_budget

    narrow = fresh_arch("resnet56", 0.0625)  # groups of 1, 2 and 4 channels
    recommended = Budget.of(mac_reduction=0.5, allocation="sensitivity", round_to=16)
    assert fitted_budget(narrow, recommended, round_to_typed=False).round_to == 1
    assert "`round_to` 16 cannot reach the target on this model" in capsys.readouterr().out
    with pytest.raises(PrunedroidError, match="and a multiple of 16 .*lower `min_keep` or `round_to`"):
        fitted_budget(narrow, recommended, round_to_typed=True)
    wide_enough = fresh_arch("vgg16", 0.25)
    assert fitted_budget(wide_enough, recommended, round_to_typed=False) == recommended


def test_pruning_in_steps_from_the_command_line_keeps_the_base_held_out_images_out(tmp_path, cifar_dir):
    """prune -> finetune -> prune again: the fine-tune holds out what the base held out (not its preset's count), so
    the images pruning chose on are never trained on, and the second prune states its reduction from the original."""
    base = save_untrained_base(tmp_path / "base.pt", holdout=700)  # the smoke preset holds out 500
    steps = [("prune", "--checkpoint", str(base), "--ratio", "0.3", "--out", str(tmp_path / "step1")),
             ("finetune", "--checkpoint", str(tmp_path / "step1" / "checkpoint.pt"), "--preset", "smoke",
              "--epochs", "1", "--train-limit", "128", "--test-limit", "100", "--out", str(tmp_path / "step1-ft")),
             ("prune", "--checkpoint", str(tmp_path / "step1-ft" / "checkpoint.pt"), "--ratio", "0.3",
              "--out", str(tmp_path / "step2"))]
    for args in steps:
        result = run_invoke(*args, "--data-dir", str(cifar_dir), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    finetuned = Checkpoint.load(tmp_path / "step1-ft" / "checkpoint.pt")
    assert finetuned.held_out_images == finetuned.recipe["holdout"] == 700
    assert "fewer than the unpruned original" in result.stdout
    second = json.loads((tmp_path / "step2" / "report.json").read_text())
    assert second["mac_reduction_from_original"] > second["mac_reduction"] > 0
