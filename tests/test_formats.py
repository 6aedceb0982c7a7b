"""The format registry: a format is one entry, and export, the sidecar, its checks and the benchmark follow it."""

import pytest
import torch
from conftest import ROOT, documented_example
from test_prune import trained_like

from prunedroid.data import normalize
from prunedroid.deploy import formats
from prunedroid.deploy.export import export_checkpoint
from prunedroid.deploy.sidecar import Sidecar
from prunedroid.errors import PrunedroidError
from prunedroid.measure.bench import benchmark
from prunedroid.models import vgg16_spec
from prunedroid.training.checkpoint import Checkpoint


@pytest.fixture
def pt2_format():
    """The documented example (docs/development.md, "Adding an export format"), executed; registered for this test
    only."""
    registered = dict(formats.FORMATS)
    yield documented_example("Adding an export format")["PT2"]
    formats.FORMATS.clear()
    formats.FORMATS.update(registered)


def test_a_format_registered_in_one_entry_is_exported_checked_and_benchmarked(pt2_format, tmp_path, synthetic_data):
    model = trained_like(vgg16_spec(0.0625))
    Checkpoint(arch=model.spec.to_dict(), state_dict=model.state_dict()).save(tmp_path / "m.pt")
    result = export_checkpoint(tmp_path / "m.pt", synthetic_data.test, tmp_path / "out", "m")
    assert result.files["pt2"] == tmp_path / "out" / "m.pt2" and list(result.files) == ["ptl", "onnx", "pte", "pt2"]
    report = result.report
    assert report["pt2"] == "m.pt2" and report["pt2_bytes"] == result.files["pt2"].stat().st_size
    assert report["verification"]["torch_export"]["max_abs_diff"] <= 1e-4 and "torch" in report["torch_export"]
    sidecar = Sidecar.read(result.sidecar)
    assert sidecar.model_file("pt2") == result.files["pt2"]
    images = normalize(synthetic_data.test.images[:20])
    with torch.no_grad():
        assert (formats.run(result.files["pt2"], images) - model.eval()(images)).abs().max() <= 1e-4
    rows = benchmark([result.sidecar], synthetic_data.test.head(200), warmup=1, runs=4, rounds=2)["rows"]
    assert {row["runtime"] for row in rows} == {"pytorch", "torchscript-lite", "onnxruntime", "executorch",
                                                "torch-export"}
    # The sidecar checks a registered format's file like the others: its magic, then its hash.
    result.files["pt2"].write_bytes(b"not a zip" + result.files["pt2"].read_bytes()[9:])
    with pytest.raises(PrunedroidError, match=r"m\.pt2 is not a \.pt2 file"):
        sidecar.model_file("pt2")


def test_an_export_from_before_a_format_existed_still_reads(pt2_format, tmp_path, synthetic_data):
    """A format registered later is not required of earlier sidecars (required=False): they read as before."""
    model = trained_like(vgg16_spec(0.0625))
    Checkpoint(arch=model.spec.to_dict(), state_dict=model.state_dict()).save(tmp_path / "m.pt")
    formats.FORMATS.pop("pt2")
    sidecar = export_checkpoint(tmp_path / "m.pt", synthetic_data.test, tmp_path / "out", "m").sidecar
    formats.register_format(pt2_format)
    older = Sidecar.read(sidecar)
    assert "pt2" not in older.files
    with pytest.raises(PrunedroidError, match="names no .pt2"):
        older.model_file("pt2")


def test_a_file_of_no_registered_format_is_named():
    with pytest.raises(PrunedroidError, match=r"model\.tflite is not a model file of a known format \(\.ptl, \.onnx"):
        formats.format_of(ROOT / "model.tflite")
