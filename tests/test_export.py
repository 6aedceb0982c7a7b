import dataclasses
import json
import statistics

import onnx
import pytest
import torch
import torch.jit.mobile
from test_prune import trained_like

import prunedroid.deploy.export as export
import prunedroid.deploy.formats as formats
import prunedroid.deploy.pte as pte
import prunedroid.measure.bench as bench_module
from prunedroid import data as cifar
from prunedroid.android.build import app_model
from prunedroid.data import normalize
from prunedroid.deploy.sidecar import Sidecar
from prunedroid.errors import PrunedroidError
from prunedroid.measure.bench import (
    benchmark,
    interleaved_latencies_ms,
    paired_difference,
    speed_for_macs,
    table_rows,
)
from prunedroid.models import build_model, vgg16_spec
from prunedroid.training.checkpoint import Checkpoint


def test_batchnorm_folding_keeps_outputs():
    model = trained_like(vgg16_spec(0.0625))
    folded = export.fold_batchnorm(model)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)) for m in folded.modules())
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)


def test_files_load_back_and_match_pytorch(vgg_exports, synthetic_data):
    out = vgg_exports["base"].parent
    sidecar = json.loads((out / "base.json").read_text())
    assert sidecar["torchscript"]["bytecode_version"] <= formats.TARGET_BYTECODE_VERSION
    assert sidecar["mean"] == list(cifar.MEAN) and sidecar["std"] == list(cifar.STD)
    assert sidecar["classes"] == list(cifar.CLASSES)
    assert sidecar["input_shape"] == [1, 3, 32, 32] and sidecar["macs"] > 0
    for check in sidecar["verification"].values():
        assert check["max_abs_diff"] <= 1e-4 and check["top1_agreement"] == 1.0 and check["images"] >= 1000
    model = build_model(sidecar["arch"]).eval()
    model.load_state_dict(torch.load(out.parent / "base.pt", weights_only=True)["state_dict"])
    images = normalize(synthetic_data.test.images[:64])
    with torch.no_grad():
        reference = model(images)
    lite = torch.jit.mobile._load_for_lite_interpreter(str(out / "base.ptl"))
    assert (lite(images) - reference).abs().max() <= 1e-4
    assert sidecar["executorch"]["delegate"] == "XnnpackBackend" and sidecar["executorch"]["delegated_fraction"] == 1
    assert sidecar["pte_bytes"] == (out / "base.pte").stat().st_size and sidecar["int8"] is None
    assert (pte.run_pte(out / "base.pte", images) - reference).abs().max() <= 1e-4  # the runtime the app runs
    graph = onnx.load(str(out / "base.onnx"))
    onnx.checker.check_model(graph)
    assert graph.opset_import[0].version >= 17
    assert (formats.run(out / "base.onnx", images) - reference).abs().max() <= 1e-4


@pytest.mark.parametrize("kind", list(formats.FORMATS))
def test_a_disagreeing_export_leaves_nothing(tmp_path, synthetic_data, monkeypatch, kind):
    model = trained_like(vgg16_spec(0.0625))
    Checkpoint(arch=model.spec.to_dict(), state_dict=model.state_dict()).save(tmp_path / "m.pt")
    entry = formats.FORMATS[kind]

    def broken(path, threads):
        run = entry.load(path, threads)
        return lambda images: run(images) + 1e-3

    monkeypatch.setitem(formats.FORMATS, kind, dataclasses.replace(entry, load=broken))  # a broken runtime
    with pytest.raises(PrunedroidError, match=f"{entry.title} export disagrees with PyTorch.*max \\|diff\\|"):
        export.export_checkpoint(tmp_path / "m.pt", synthetic_data.test, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # not even the folder the export made for itself


def test_benchmark_reports_every_runtime_side_by_side(vgg_exports, synthetic_data):
    result = benchmark([vgg_exports["base"], vgg_exports["small"]],
                       synthetic_data.test.head(1000), warmup=2, runs=20, rounds=4)
    rows = {(r["model"], r["runtime"]): r for r in result["rows"]}
    runtimes = ("pytorch", "torchscript-lite", "onnxruntime", "executorch")
    assert set(rows) == {(m, r) for m in ("base", "small") for r in runtimes}
    for model in ("base", "small"):
        top1 = {rows[model, r]["test_top1"] for r in runtimes}
        assert len(top1) == 1  # the runtimes agree on every image's class
    assert rows["small", "onnxruntime"]["mac_ratio"] == pytest.approx(
        rows["small", "onnxruntime"]["macs"] / rows["base", "onnxruntime"]["macs"])
    assert all(r["latency_median_ms"] > 0 and r["latency_p90_ms"] >= r["latency_median_ms"] and r["file_bytes"] > 0
               for r in result["rows"])


def test_latency_repeated_in_separate_processes_reports_the_median_and_spread(vgg_exports, synthetic_data):
    sidecars = [vgg_exports["base"], vgg_exports["small"]]
    result = benchmark(sidecars, synthetic_data.test.head(64), warmup=1, runs=10, rounds=2, processes=2)
    assert result["processes"] == 2
    base_ms = {r["runtime"]: r["latency_ms_per_process"] for r in result["rows"] if r["model"] == "base"}
    for row in result["rows"]:
        assert row["latency_ratio_min"] <= row["latency_ratio"] <= row["latency_ratio_max"]
        if row["model"] == "base":  # each process's ratio is against the base in that process
            assert row["latency_ratio_min"] == row["latency_ratio_max"] == 1.0
        # each process's own figures are kept: the summaries are recomputed from them exactly
        ms, ratios = row["latency_ms_per_process"], row["latency_ratio_per_process"]
        assert len(ms) == len(ratios) == 2 and row["latency_median_ms"] == statistics.median(ms)
        assert ratios == [m / b for m, b in zip(ms, base_ms[row["runtime"]])]
        assert (min(ratios), statistics.median(ratios), max(ratios)) == (
            row["latency_ratio_min"], row["latency_ratio"], row["latency_ratio_max"])
    small = next(r for r in result["rows"] if r["model"] == "small" and r["runtime"] == "onnxruntime")
    shown = next(r for r in table_rows(result) if r["model"] == "small" and r["runtime"] == "onnxruntime")
    assert shown["latency vs base"] == (f"{small['latency_ratio']:.2f}x [{small['latency_ratio_min']:.2f}-"
                                        f"{small['latency_ratio_max']:.2f}]")
    # a model is flagged slow for its MACs when its slowest process says so, though its median does not
    assert speed_for_macs(0.54, 0.5, worst=0.56) == "1.08x SLOW for its MACs"


def test_a_timing_process_that_fails_is_one_error_naming_it(vgg_exports, synthetic_data, monkeypatch, tmp_path):
    failing = tmp_path / "python"
    failing.write_text("#!/bin/sh\necho 'RuntimeError: out of memory' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setattr(bench_module.sys, "executable", str(failing))
    with pytest.raises(PrunedroidError, match=r"timing process 1 of 2 failed \(RuntimeError: out of memory\)"):
        benchmark([vgg_exports["base"]], synthetic_data.test.head(10), warmup=0, runs=10, processes=2)
    with pytest.raises(PrunedroidError, match="need at least 1 timing process"):
        benchmark([vgg_exports["base"]], synthetic_data.test.head(10), runs=10, processes=0)


def test_latencies_are_timed_in_interleaved_rounds():
    calls = []
    timed = interleaved_latencies_ms({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                     warmup=1, runs=4, rounds=2)
    # warm-up once each, then every round runs each call runs / rounds times, so drift hits both alike
    assert "".join(calls) == "ab" + "aabb" * 2
    assert set(timed) == {"a", "b"} and all(0 <= t["median"] <= t["p90"] for t in timed.values())
    with pytest.raises(PrunedroidError, match=r"--runs >= 4 \(one per interleaved round\)"):
        interleaved_latencies_ms({"a": lambda: None}, runs=3, rounds=4)


def test_paired_difference_is_the_mean_gap_with_an_interval_over_images():
    generator = torch.Generator().manual_seed(0)
    reference = torch.rand(3, 4000, generator=generator) < 0.8
    same = paired_difference(reference, reference)
    assert same["difference"] == same["low"] == same["high"] == 0 and (same["images"], same["runs"]) == (4000, 3)
    better = reference.clone()
    better[:, :400] = True  # right on 400 more images, in every run
    gap = paired_difference(better, reference)
    exact = (better.double().mean() - reference.double().mean()).item()
    assert gap["difference"] == pytest.approx(exact) and gap["low"] < exact < gap["high"]
    assert gap["low"] > 0  # the gain is on the same images in every run: clearly above zero
    noise = torch.rand(3, 4000, generator=generator) < 0.8  # independent of the reference: the interval spans 0
    unrelated = paired_difference(noise, reference)
    assert unrelated["low"] < 0 < unrelated["high"]
    assert paired_difference(better, reference, seed=1) != gap  # another bootstrap draw, same mean
    assert paired_difference(better, reference, seed=1)["difference"] == gap["difference"]
    with pytest.raises(PrunedroidError, match="same images"):
        paired_difference(better[:, :10], reference)


def test_an_interval_over_runs_includes_how_far_the_seed_moves_the_gap():
    generator = torch.Generator().manual_seed(0)
    reference = torch.rand(1, 4000, generator=generator) < 0.8
    seeds = reference.repeat(3, 1)
    seeds[0, :200] = True  # one seed gains 200 images, another loses 200: the mean gap is 0, the seed spread is not
    seeds[2, :200] = False
    over_images = paired_difference(seeds, reference)
    over_runs = paired_difference(seeds, reference, over_runs=True)
    assert over_runs["difference"] == over_images["difference"] and over_runs["over_runs"]
    assert over_runs["high"] - over_runs["low"] > 3 * (over_images["high"] - over_images["low"])
    same_runs = paired_difference(reference.repeat(3, 1), reference, over_runs=True)
    assert same_runs["low"] == same_runs["high"] == 0  # identical seeds add no width


def test_non_finite_models_are_refused_and_nothing_is_written(tmp_path, synthetic_data):
    """NaN weights, and finite weights whose logits overflow, both fail export: a NaN max |diff| compares false with
    any limit, so it must never pass as agreement."""
    nan_model = trained_like(vgg16_spec(0.0625))
    nan_model.classifier[-1].weight.data[0, 0] = float("nan")
    Checkpoint(arch=nan_model.spec.to_dict(), state_dict=nan_model.state_dict()).save(tmp_path / "nan.pt")
    with pytest.raises(PrunedroidError, match="NaN or infinite values in 1 tensors.*classifier.3.weight"):
        export.export_checkpoint(tmp_path / "nan.pt", synthetic_data.test, tmp_path / "out")
    overflow = trained_like(vgg16_spec(0.0625))
    overflow.classifier[-1].weight.data.fill_(3e38)
    Checkpoint(arch=overflow.spec.to_dict(), state_dict=overflow.state_dict()).save(tmp_path / "inf.pt")
    with pytest.raises(PrunedroidError, match="PyTorch gives NaN or infinite outputs"):
        export.export_checkpoint(tmp_path / "inf.pt", synthetic_data.test, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("broken", ["nan", "inf", "-inf"])
def test_compare_fails_on_non_finite_logits(broken):
    reference = torch.randn(8, 10)
    logits = reference.clone()
    logits[3, 2] = float(broken)
    with pytest.raises(PrunedroidError, match="ONNX gives NaN or infinite outputs"):
        export.compare(reference, logits, "ONNX")
    with pytest.raises(PrunedroidError, match="PyTorch gives NaN or infinite outputs"):
        export.compare(logits, reference, "ONNX")
    assert export.compare(reference, reference.clone(), "ONNX")["max_abs_diff"] == 0


def test_models_slower_than_their_macs_are_flagged(vgg_exports, synthetic_data):
    assert speed_for_macs(0.56, 0.5) == "1.12x SLOW for its MACs"
    assert speed_for_macs(0.54, 0.5) == "1.08x" and speed_for_macs(1.0, 1.0) == "1.00x"
    result = benchmark([vgg_exports["base"], vgg_exports["small"]],
                       synthetic_data.test.head(1000), warmup=1, runs=10, rounds=2)
    for row, shown in zip(result["rows"], table_rows(result)):
        assert shown["latency / MAC ratio"].startswith(f"{row['latency_ratio'] / row['mac_ratio']:.2f}x")


def _self_labelled(model, split: cifar.Split) -> cifar.Split:
    """`split` relabelled with `model`'s own predictions: fp32 top-1 is then 100%, so an int8 file's top-1 says how
    many of its predictions quantization changed (synthetic labels alone would put every model at chance)."""
    with torch.no_grad():
        labels = torch.cat([model.eval()(batch).argmax(1) for batch in normalize(split.images).split(500)])
    return cifar.Split(split.images, labels)


def test_int8_files_are_written_checked_by_accuracy_and_much_smaller(tmp_path, synthetic_data):
    model = trained_like(vgg16_spec(0.125))
    Checkpoint(arch=model.spec.to_dict(), state_dict=model.state_dict()).save(tmp_path / "m.pt")
    test = _self_labelled(model, synthetic_data.test.head(2000))
    result = export.export_checkpoint(tmp_path / "m.pt", test, tmp_path / "out", "m",
                                      calibration=synthetic_data.holdout.head(64), max_drop=5.0)
    int8 = result.report["int8"]
    assert int8["fp32_test_top1"] == 1.0 and int8["test_images"] == 2000
    assert int8["calibration"] == "64 held-out training images" and int8["executorch"]["delegated_fraction"] == 1
    for kind, runtime in (("pte", "executorch"), ("onnx", "onnxruntime"), ("ptl", "torchscript-lite")):
        assert int8["test_top1"][runtime] >= 0.95, runtime
        assert int8[f"{kind}_bytes"] == (tmp_path / "out" / f"m-int8.{kind}").stat().st_size
        assert int8[f"{kind}_bytes"] <= 0.35 * result.report[f"{kind}_bytes"], kind
    images = normalize(test.images[:200])
    assert top1_of(pte.run_pte(tmp_path / "out" / "m-int8.pte", images), test.labels[:200]) >= 0.95
    # The int8 .ptl holds quantized operators (QNNPACK's, as the phone runs them) at the bytecode the app reads.
    engine = torch.backends.quantized.engine  # the export set QNNPACK only while it worked
    with formats.qnnpack_engine():
        lite = torch.jit.mobile._load_for_lite_interpreter(str(tmp_path / "out" / "m-int8.ptl"))
        assert top1_of(lite(images), test.labels[:200]) >= 0.95
    assert {"quantized::linear", "aten::quantize_per_tensor.tensor_qparams"} <= set(
        torch.jit.mobile._export_operator_list(lite))
    assert int8["torchscript"]["bytecode_version"] == formats.TARGET_BYTECODE_VERSION
    assert torch.backends.quantized.engine == engine
    # An int8 export from before the int8 .ptl still reads; the app's lite flavor then asks for a new export.
    record = json.loads(result.sidecar.read_text())
    record["int8"] = {key: value for key, value in record["int8"].items() if not key.startswith("ptl")}
    result.sidecar.write_text(json.dumps(record))
    older = Sidecar.read(result.sidecar)
    assert set(older.int8) == {"pte", "onnx"}
    with pytest.raises(PrunedroidError, match=r"has no int8 \.ptl \(exported before there was one\); export again"):
        app_model(older, "lite", "int8")


def top1_of(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def test_an_int8_file_past_max_drop_is_refused_and_nothing_is_written(tmp_path, synthetic_data, monkeypatch):
    """A quantizer that damages the model (here: one that flips the classifier's sign) makes the int8 top-1 fall far
    below fp32: export refuses, naming the drop, and no file at all is left."""
    model = trained_like(vgg16_spec(0.125))
    Checkpoint(arch=model.spec.to_dict(), state_dict=model.state_dict()).save(tmp_path / "m.pt")
    real_quantize = pte.quantize_int8

    def damaging_quantize(deploy, calibration):
        broken = export.fold_batchnorm(deploy)
        broken.classifier[-1].weight.data.neg_()
        return real_quantize(broken, calibration)

    monkeypatch.setattr(pte, "quantize_int8", damaging_quantize)
    with pytest.raises(PrunedroidError, match=r"int8 executorch loses .* points .* more than --max-drop 1.0"):
        export.export_checkpoint(tmp_path / "m.pt", _self_labelled(model, synthetic_data.test.head(1000)),
                                 tmp_path / "out", calibration=synthetic_data.holdout.head(32), max_drop=1.0)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options, message", [
    (("int4", {}), "`quantize` is int8 or none"),
    ((None, {"max_drop": "2"}), "`max_drop` given without `quantize` int8"),
    (("int8", {"calibration_images": "0"}), "`calibration_images` must be >= 1"),
    (("int8", {"max_drop": "nan"}), "`max_drop` expects a finite number"),
])
def test_bad_quantization_options_are_clear_errors(options, message):
    quantize, overrides = options
    with pytest.raises(PrunedroidError, match=message):
        export.Int8Options.from_options(quantize, {"calibration_images": None, "max_drop": None, **overrides})


def test_an_int8_drop_is_refused_only_past_max_drop_and_beyond_chance():
    """The smoke pipeline on an Intel Xeon lost six images of 500 on a chance-level model (1.2 points, max 1.0): with
    about thirty images changing answers either way that is chance, and it passes; the same drop on 10,000 images
    with few changed answers, or a large drop anywhere, is refused."""
    def pair(images: int, lost: int, gained: int) -> tuple[torch.Tensor, torch.Tensor]:
        fp32 = torch.zeros(images, dtype=torch.bool)
        fp32[:lost] = True  # right in fp32, wrong in int8
        int8 = torch.zeros(images, dtype=torch.bool)
        int8[lost:lost + gained] = True  # wrong in fp32, right in int8
        fp32[-50:] = int8[-50:] = True  # right in both
        return fp32, int8

    drop, low, high = export.paired_drop(*pair(500, 18, 12))
    assert drop == pytest.approx(1.2) and low < 0 < high
    export.check_int8(*pair(500, 18, 12), "onnxruntime", max_drop=1.0)  # 1.2 points, but not told from chance
    with pytest.raises(PrunedroidError, match=r"int8 executorch loses 1\.20 points of top-1 on 10000 test images "
                                              r"\(95% interval 0\.9"):
        export.check_int8(*pair(10_000, 130, 10), "executorch", max_drop=1.0)
    export.check_int8(*pair(10_000, 130, 10), "executorch", max_drop=1.5)  # told from chance, but within the limit
    with pytest.raises(PrunedroidError, match="more than --max-drop 1.0"):
        export.check_int8(*pair(500, 100, 0), "torchscript-lite", max_drop=1.0)
