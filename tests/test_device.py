"""`bench-device` against tests/fake_adb.py: adb's real output formats and failures, one simulated phone."""
import json
from pathlib import Path

import pytest
import torch

from prunedroid.android import device
from prunedroid.android.device import Device, bench_device, device_latency_table, find_adb, parse_devices, pick_device
from prunedroid.deploy.sidecar import Sidecar
from prunedroid.errors import PrunedroidError
from prunedroid.measure.bench import add_device_rows, table_rows
from prunedroid.measure.latency import LatencyOptions, LatencyTable, reachable_shapes, where_measured
from prunedroid.models import vgg16_spec
from prunedroid.pruned import example_input, prune_model
from prunedroid.pruning import Budget, channel_graph
from prunedroid.pruning.groups import LayerShape
from tests.conftest import PHONE, copy_export, run_invoke
from tests.test_prune import trained_like

EMULATOR = "emulator-5554          device product:sdk_gphone64_x86_64 model:sdk_gphone64_x86_64 transport_id:1"
LOCKED = "R5CT1234ABC            unauthorized usb:1-1 transport_id:4"


def test_adb_devices_listing_and_the_choice_of_device():
    listing = f"* daemon not running; starting now at tcp:5037\n* daemon started successfully\n" \
              f"List of devices attached\n{PHONE}\n{EMULATOR}\n\n"
    devices = parse_devices(listing)
    assert [(d.serial, d.state) for d in devices] == [("R5CT1234ABC", "device"), ("emulator-5554", "device")]
    assert pick_device(devices, "emulator-5554").serial == "emulator-5554"
    for found, serial, message in [
        ([], None, "no Android device or emulator attached"), (devices, None, "2 devices attached"),
        (devices, "XYZ", "no device 'XYZ' attached"), (parse_devices(LOCKED), None, "Allow USB debugging"),
        ([Device("R5CT1234ABC", "offline", "")], None, "is offline"),
    ]:
        with pytest.raises(PrunedroidError, match=message):
            pick_device(found, serial)


def test_a_missing_adb_says_where_to_get_it(tmp_path):
    with pytest.raises(PrunedroidError, match="platform-tools"):
        find_adb({"PATH": str(tmp_path)})


@pytest.fixture(scope="module")
def models(vgg_exports, tmp_path_factory) -> list[Path]:
    """conftest.vgg_exports as a base and a pruned model: their sidecars."""
    folder = tmp_path_factory.mktemp("device-export")
    return [copy_export(vgg_exports["base"], folder), copy_export(vgg_exports["small"], folder, "pruned")]


@pytest.fixture
def apk(tmp_path) -> Path:
    """The executorch flavor's APK (the fake phone's app runs what its bytes name: tests/fake_adb.py)."""
    path = tmp_path / "app-executorch-debug.apk"
    path.write_bytes(b"PK executorch")
    return path


@pytest.fixture
def apks(apk) -> dict[str, Path]:
    lite = apk.with_name("app-lite-debug.apk")
    lite.write_bytes(b"PK lite")
    return {"executorch": apk, "lite": lite}


def test_each_model_is_measured_on_the_phone_and_cleaned_up(phone, models, apks, tmp_path):
    result = bench_device(models, apks, warmup=2, runs=5, threads=2, env=phone)
    assert result["serial"] == "R5CT1234ABC" and result["device"]["model"] == "Pixel 7"
    assert set(result["models"]) == {"lite", "executorch"}
    for runtime, suffix in (("lite", ".ptl"), ("executorch", ".pte")):
        assert set(result["models"][runtime]) == {"base", "pruned"}
        for name, sidecar in zip(("base", "pruned"), models):
            run = result["models"][runtime][name]
            assert run["model_bytes"] == (sidecar.parent / f"{name}{suffix}").stat().st_size
            assert run["runs"] == 5 and run["threads"] == 2 and run["latency_ms"]["median"] > 0
            assert run["runtime"].startswith({"lite": "pytorch_android_lite", "executorch": "executorch-android"}[
                runtime])
    state = tmp_path / "state"
    assert not (state / "fs/data/local/tmp/prunedroid").exists()  # what was copied is removed
    assert not [p for p in (state / "app/files").rglob("*") if p.is_file()]
    host = {"rows": [{"model": "base", "runtime": "onnxruntime", "test_top1": 0.5, "macs": 1, "params": 1,
                      "checkpoint_sha256": Sidecar.read(models[0]).checkpoint_sha256,
                      "file_bytes": 1, "latency_median_ms": 1.0, "latency_p90_ms": 1.0, "mac_ratio": 1.0,
                      "latency_ratio": 1.0, "threads": 1}]}
    merged = add_device_rows(host, result, {p.stem: Sidecar.read(p) for p in models})
    assert len(merged["rows"]) == 5
    for runtime in ("android-lite (Google Pixel 7)", "android-executorch (Google Pixel 7)"):
        phone_rows = [r for r in table_rows(merged) if r["runtime"] == runtime]
        assert [r["model"] for r in phone_rows] == ["base", "pruned"]
        assert phone_rows[0]["latency vs base"] == "1.00x" and phone_rows[1]["test top-1"] == ""


def test_device_failures_are_explained(phone, models, apk, apks):
    with pytest.raises(PrunedroidError, match="INSTALL_FAILED_UPDATE_INCOMPATIBLE(.|\n)*adb uninstall"):
        bench_device(models, apks, env={**phone, "FAKE_ADB_INSTALL_FAIL": "1"})
    with pytest.raises(PrunedroidError, match="no result for base after 1 s(.|\n)*FATAL EXCEPTION"):
        bench_device(models, apks, env={**phone, "FAKE_ADB_CRASH": "1"}, timeout=1)
    with pytest.raises(PrunedroidError, match="is not what this version writes"):
        bench_device(models, apks, env={**phone, "FAKE_ADB_OLD_APP": "1"})
    with pytest.raises(PrunedroidError, match="Allow USB debugging"):
        bench_device(models, apks, env={**phone, "FAKE_ADB_DEVICES": LOCKED})
    with pytest.raises(PrunedroidError, match="no APK at .*invoke build-apk --runtime lite"):
        bench_device(models, {**apks, "lite": apk.with_name("missing.apk")}, env=phone)
    # One runtime per build: the lite build cannot run a .pte (the app refuses it), nor the ExecuTorch build a .ptl.
    with pytest.raises(PrunedroidError, match="could not benchmark base: .*this build runs .ptl files"):
        bench_device(models, {"executorch": apks["lite"]}, env=phone)
    with pytest.raises(PrunedroidError, match="an APK per runtime, of executorch, lite; got tflite"):
        bench_device(models, {"tflite": apk}, env=phone)


def test_bench_device_from_the_command_line(phone, models, apks, tmp_path, monkeypatch):
    for key, value in phone.items():
        monkeypatch.setenv(key, value)
    report = tmp_path / "bench"
    result = run_invoke("bench-device", "--models", ",".join(map(str, models)), "--apk", str(apks["executorch"]),
                        "--lite-apk", str(apks["lite"]), "--runs", "3", "--report", str(report))
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads(report.with_suffix(".json").read_text())
    assert saved["device"]["serial"] == "R5CT1234ABC" and len(saved["rows"]) == 4
    table = report.with_suffix(".md").read_text()
    assert "android-lite (Google Pixel 7)" in table and "android-executorch (Google Pixel 7)" in table


def fake_layer_pte(shape: LayerShape, path: Path, int8: bool = False) -> torch.Tensor:
    """A stand-in program whose size grows with the layer's work (the fake app's latency is its size): exporting
    real ones is tested in test_latency, and would take a second or two per shape here."""
    work = shape.inputs // shape.groups * shape.outputs * max(1, shape.size) ** 2 * shape.kernel ** 2
    path.write_bytes(b"\0" * (64 + work // 4))
    return torch.zeros(1, shape.inputs, max(1, shape.size), max(1, shape.size))


def test_a_phone_latency_table_survives_an_unplug_and_feeds_a_prune(phone, apk, tmp_path, synthetic_data,
                                                                    monkeypatch):
    monkeypatch.setattr(device, "write_layer_pte", fake_layer_pte)
    model = trained_like(vgg16_spec(0.0625))
    coarse = Budget.of(latency_reduction=0.2, allocation="latency", round_to=16)
    shapes = reachable_shapes(channel_graph(model, example_input()), coarse)
    table = tmp_path / "phone.json"
    with pytest.raises(PrunedroidError, match="device offline"):
        device_latency_table(shapes, table, apk, env={**phone, "FAKE_ADB_UNPLUG_AFTER": "4"}, runs=3)
    assert len(json.loads(table.read_text())["ms"]) == 4  # every shape timed before the unplug is kept
    with pytest.raises(PrunedroidError, match="no Android device"):  # still unplugged: nothing is touched
        device_latency_table(shapes, table, apk, env=phone, runs=3)
    (Path(phone["FAKE_ADB_STATE"]) / "unplugged").unlink()  # plugged back in
    measured = device_latency_table(shapes, table, apk, env=phone, runs=3)
    assert set(measured["ms"]) == {shape.key for shape in shapes} and measured == json.loads(table.read_text())
    assert int((Path(phone["FAKE_ADB_STATE"]) / "started").read_text()) == len(shapes) + 1  # only the lost one again
    assert measured["where"]["device"]["model"] == "Pixel 7" and measured["where"]["threads"] == 1
    assert not list((Path(phone["FAKE_ADB_STATE"]) / "app" / "files").glob("prunedroid-layer*"))  # cleaned up

    phone_table = LatencyOptions(latency_table=str(table))
    pruned, report = prune_model(model, "l1", coarse, holdout=synthetic_data.holdout.head(64), latency=phone_table)
    assert report["latency_runtime"]["device"]["model"] == "Pixel 7" and report["latency_table"] == str(table)
    assert measured == json.loads(table.read_text())  # read, never written
    finer = Budget.of(latency_reduction=0.2, allocation="latency", round_to=4)
    with pytest.raises(PrunedroidError, match="has no timing for .*invoke latency-table --device"):
        prune_model(model, "l1", finer, holdout=synthetic_data.holdout.head(64), latency=phone_table)

    elsewhere = json.loads(table.read_text())
    elsewhere["where"]["device"]["serial"] = "another-phone"
    table.write_text(json.dumps(elsewhere))
    with pytest.raises(PrunedroidError, match="give another --out"):
        device_latency_table(shapes, table, apk, env=phone, runs=3)
    with pytest.raises(PrunedroidError, match="the app times .pte programs"):
        device_latency_table(shapes, tmp_path / "x.json", apk, runtime="onnxruntime", env=phone)
    host = tmp_path / "host.json"
    host.write_text(json.dumps({"where": where_measured("onnxruntime"), "ms": {}}))
    with pytest.raises(PrunedroidError, match="was not measured on a device"):
        LatencyTable.from_device(host)
