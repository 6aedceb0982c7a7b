"""The experiment layer (prunedroid.experiment, what benchmarks/ shares) on a tiny untrained base and synthetic data:
cells resume, fine-tunes land where pairing finds them, a paired difference agrees with the two cells' own top-1, and
a later run keeps it."""
import dataclasses
import sys

import pytest
from conftest import ROOT, save_untrained_base

from prunedroid.deploy.export import fold_batchnorm
from prunedroid.errors import PrunedroidError
from prunedroid.experiment import (
    Bench,
    architecture_latencies,
    paired_table,
    ratios_to,
    repeated_program_latencies,
)
from prunedroid.models import build_model, vgg16_spec
from prunedroid.pruned import example_input
from prunedroid.pruning import Budget
from prunedroid.training.checkpoint import Checkpoint, weights_sha256
from prunedroid.training.train import CHECKPOINT_NAME


@pytest.fixture
def scripts(monkeypatch):
    """The scripts under benchmarks/ importable, as each imports its neighbours when it runs."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))


def test_paired_difference_matches_the_cells_and_is_not_redone(tmp_path, cifar_dir):
    base = save_untrained_base(tmp_path / "base.pt", holdout=1500)
    bench = Bench.open(str(base), str(tmp_path / "out"), str(tmp_path / "work"), finetune_preset="smoke",
                       data_dir=str(cifar_dir), threads=1)
    bench.finetune_config = dataclasses.replace(bench.finetune_config, train_limit=256)
    # the base is named by its file and by its weights (a file's hash also covers its training history's timings)
    assert bench.payload["base"]["weights_sha256"] == weights_sha256(Checkpoint.load(base).state_dict)
    budget = Budget.of(mac_reduction=0.5)
    for name in ("l1", "random"):
        bench.measure(f"0.50/{name}", name, budget, target=0.5)
    bench.pair("0.50/l1", "0.50/random")
    assert "0.50/l1 vs 0.50/random" not in bench.payload["paired"]  # nothing fine-tuned yet: nothing to pair
    for name in ("l1", "random"):
        bench.finetune(f"0.50/{name}", name, budget)
    assert bench.finetune_config.width == 0.0625  # the base's width, recorded with the recipe

    bench.pair("0.50/l1", "0.50/random")
    result = bench.payload["paired"]["0.50/l1 vs 0.50/random"]
    cells = bench.cells
    assert result["seeds"] == [0] and result["test"]["images"] == len(bench.data.test)
    assert result["test"]["difference"] == pytest.approx(cells["0.50/l1"]["top1_finetuned"]
                                                         - cells["0.50/random"]["top1_finetuned"])
    assert result["unused_holdout"]["images"] == 1500 - 1024  # past the images SCP analyses
    assert result["test"]["low"] <= result["test"]["difference"] <= result["test"]["high"]
    assert "| 50% | l1 | 1 | " in paired_table(bench.payload)

    bench.correct.clear()
    bench.pair("0.50/l1", "0.50/random")  # same seeds: kept, not re-evaluated
    assert not bench.correct
    bench.payload["latency"] = {"cells": sorted(bench.cells), "rows": {}}  # what a script timed
    bench.save("title", "table")
    reopened = Bench.open(str(base), str(tmp_path / "out"), str(tmp_path / "work"), finetune_preset="smoke",
                          data_dir=str(cifar_dir), threads=1)  # a later run over other targets keeps the pairs
    assert reopened.payload["paired"] == bench.payload["paired"]
    assert reopened.payload["latency"] == bench.payload["latency"]  # and the timing: not redone on a rerun
    assert "command" not in reopened.payload and "machine" not in reopened.payload  # written afresh by save()


def test_a_finetune_finished_under_work_is_recorded_not_redone(tmp_path, cifar_dir):
    base = save_untrained_base(tmp_path / "base.pt", holdout=1100)
    budget = Budget.of(mac_reduction=0.5)

    def bench_for(out: str) -> Bench:
        bench = Bench.open(str(base), str(tmp_path / out), str(tmp_path / "work"), finetune_preset="smoke",
                           data_dir=str(cifar_dir), threads=1)
        bench.finetune_config = dataclasses.replace(bench.finetune_config, train_limit=256)
        bench.measure("0.50/l1", "l1", budget, target=0.5)
        return bench

    side_bench = bench_for("side")  # a second process, its own results file
    side = side_bench.finetune("0.50/l1", "l1", budget)
    checkpoint = side_bench.finetuned_folder("0.50/l1") / CHECKPOINT_NAME
    trained_at = checkpoint.stat().st_mtime_ns
    main = bench_for("main").finetune("0.50/l1", "l1", budget)
    assert checkpoint.stat().st_mtime_ns == trained_at  # picked up, not trained again
    assert main["top1_finetuned"] == side["top1_finetuned"]
    assert main["finetune_seconds"] == side["finetune_seconds"] > 0  # the epochs' time, not this call's


def test_architecture_timing_is_repeated_per_process_and_resumes(tmp_path):
    """Each architecture's ratio to the first is the median over separate processes with their min and max; a rerun
    of the same programs times nothing again, and other programs drop the timings of the previous ones."""


    base = vgg16_spec(0.0625)
    narrow = dataclasses.replace(base, conv_channels=tuple(max(1, c // 2) for c in base.conv_channels))
    timed = architecture_latencies({"base": base, "narrow": narrow}, runs=10, processes=2)
    assert timed["base"] == {**timed["base"], "latency_ratio": 1.0, "latency_ratio_min": 1.0, "latency_ratio_max": 1.0}
    row = timed["narrow"]
    assert 0 < row["latency_ratio_min"] <= row["latency_ratio"] <= row["latency_ratio_max"] and row["median_ms"] > 0

    assert ratios_to("a", {"a": [2.0, 4.0, 1.0], "b": [1.0, 1.0, 1.0]})["b"] == {
        "median_ms": 1.0, "latency_ratio": 0.5, "latency_ratio_min": 0.25, "latency_ratio_max": 1.0,
        "ms_per_process": [1.0, 1.0, 1.0], "latency_ratio_per_process": [0.5, 0.25, 1.0]}

    programs = tmp_path / "programs"
    programs.mkdir()
    from prunedroid.deploy.formats import write_onnx

    paths = {}
    for name, spec in (("base", base), ("narrow", narrow)):
        paths[name] = programs / f"{name}.onnx"
        write_onnx(fold_batchnorm(build_model(spec)), paths[name], dynamic_batch=False, example=example_input())
    first = repeated_program_latencies("onnxruntime", paths, 2, tmp_path, runs=10)
    kept = {path: path.stat().st_mtime_ns for path in tmp_path.glob("onnxruntime-timing-*.json")}
    assert len(kept) == 2 and all(len(times) == 2 for times in first.values())
    assert repeated_program_latencies("onnxruntime", paths, 2, tmp_path, runs=10) == first
    assert {path: path.stat().st_mtime_ns for path in kept} == kept  # nothing re-timed
    repeated_program_latencies("onnxruntime", {"base": paths["base"]}, 1, tmp_path, runs=10)
    assert sorted(path.name for path in tmp_path.glob("onnxruntime-timing-*.json")) == ["onnxruntime-timing-0.json"]


def test_pruning_in_steps_reaches_the_target_from_the_base_and_resumes(tmp_path, cifar_dir, monkeypatch, scripts):
    from goal import measure_cell, pruned_in_steps, step_reduction, verdict

    import prunedroid.pruned

    # Sensitivity curves on 256 + 256 held-out images instead of 1024 + 2048: the same code, a sixth of the time.
    monkeypatch.setattr(prunedroid.pruned, "BATCHNORM_IMAGES", 256)
    monkeypatch.setattr(prunedroid.pruned, "SCORED_IMAGES", 256)

    # Two steps to 70% fewer MACs remove the same share of what is left each: 1 - sqrt(0.3) of the base, then of
    # the model the first step left, whatever MACs that step actually reached.
    first = step_reduction(0.7, 2, 1, 1000, 1000)
    assert first == pytest.approx(1 - 0.3 ** 0.5)
    assert step_reduction(0.7, 2, 2, 1000, 560) == pytest.approx(1 - 300 / 560)
    assert step_reduction(0.7, 1, 1, 1000, 1000) == pytest.approx(0.7)

    base = save_untrained_base(tmp_path / "base.pt", holdout=3200)  # 128 held-out images no step measures on
    bench = Bench.open(str(base), str(tmp_path / "out"), str(tmp_path / "work"), finetune_preset="smoke",
                       data_dir=str(cifar_dir), threads=1, distill_weight="0.5")
    bench.finetune_config = dataclasses.replace(bench.finetune_config, train_limit=256)
    final = pruned_in_steps(bench, 0.7, 2, 2, seed=0, round_to=1)
    record = final.pruning
    assert record is not None and record["previous"]["budget"]["allocation"] == "sensitivity"
    assert record["mac_reduction_from_original"] == pytest.approx(0.7, abs=0.03)
    assert record["previous"]["mac_reduction"] == pytest.approx(first, abs=0.03)
    steps = sorted((tmp_path / "work").glob("0.70-2-step-2-epochs-seed0/step*/" + CHECKPOINT_NAME))
    assert [path.parent.name for path in steps] == ["step1", "step2"]
    assert len(list((tmp_path / "work").glob("sensitivity-*.json"))) == 2  # curves of the base, then of step 1
    written = [path.stat().st_mtime_ns for path in steps]

    cell = measure_cell(bench, 0.7, 2, 2, [0], round_to=1)  # the same chain again: resumed, nothing retrained
    assert [path.stat().st_mtime_ns for path in steps] == written
    assert cell["mac_reduction"] == record["mac_reduction_from_original"]
    assert cell["per_seed"]["unseen"][0] == pytest.approx(cell["vs_base"]["unseen"]["difference"]
                                                           + bench.base_top1("unseen"))
    cell["vs_base"]["test"]["difference"] = -0.004  # within 0.5 point: the verdict names it
    assert "**" in verdict({"a": cell}) and f"{cell['mac_reduction']:.1%}" in verdict({"a": cell})
    cell["vs_base"]["test"]["difference"] = -0.02
    assert verdict({"a": cell}).startswith("No cell stays within 0.5 point")


def test_counting_alone_keeps_the_earlier_timing_of_the_same_architecture(tmp_path, scripts):
    """round_to --processes 0 times nothing: each counted row takes the timing its architecture (width and channels)
    had in the earlier run, and a width with an architecture the earlier run did not time is refused before anything
    is counted, not left blank."""
    from round_to import timed_architectures

    assert architecture_latencies({"base": vgg16_spec(0.0625)}, processes=0) == {"base": {}}
    results = tmp_path / "round_to.json"
    timed = timed_architectures(0.0625, [0.5], [4], runs=10, processes=1, counting_processes=0, earlier=[],
                                results=results)
    kept = timed_architectures(0.0625, [0.5], [4], runs=10, processes=0, counting_processes=0, earlier=timed,
                               results=results)
    assert kept == timed and len(kept) == 2 and all(row["median_ms"] > 0 for row in kept)
    with pytest.raises(PrunedroidError, match="no timing of 1 of the width-0.0625 architectures .* --processes 5"):
        timed_architectures(0.0625, [0.5], [4, 8], runs=10, processes=0, counting_processes=0, earlier=timed,
                            results=results)


def test_a_benchmark_result_names_the_script_version_that_made_it(tmp_path, monkeypatch):
    """write_results records the running benchmark script's SHA-256 and commit (and whether it was modified since),
    so every committed result names the code that reproduces it; a task or a test records none."""
    import json

    from prunedroid.files import file_sha256
    from prunedroid.measure.report import write_results

    script = ROOT / "benchmarks" / "any_cnn.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--models", "vgg11"])
    write_results(tmp_path / "result", {"rows": []}, "t", "table")
    recorded = json.loads((tmp_path / "result.json").read_text())["script"]
    assert recorded["script"] == "benchmarks/any_cnn.py" and recorded["sha256"] == file_sha256(script)
    if "commit" in recorded:  # a git checkout (CI's clean clone is one)
        assert len(recorded["commit"]) == 40 and isinstance(recorded["modified"], bool)
    assert f"Script: `benchmarks/any_cnn.py`, SHA-256 {file_sha256(script)[:12]}" in (
        tmp_path / "result.md").read_text()
    monkeypatch.setattr(sys, "argv", [str(ROOT / "tasks.py")])
    write_results(tmp_path / "task", {"rows": []}, "t", "table")
    assert "script" not in json.loads((tmp_path / "task.json").read_text())
