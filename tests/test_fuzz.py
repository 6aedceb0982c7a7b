"""Fuzzing the files a user (or an attacker) hands over: sidecars, checkpoints, latency tables, bench reports and the
JSON a phone sends back. Each case is a seeded mutation of a real file - random or truncated bytes, wrong types,
NaN/inf/huge numbers, path tricks - and every reader must either accept it with its contract intact or refuse it
with one PrunedroidError line; no other exception, no abort, and nothing outside the case's folder changed.

CI runs FUZZ_CASES (500) cases per kind; by hand, more (the counts print with -s):
    PRUNEDROID_FUZZ_CASES=20000 invoke test --workers 0 --args "tests/test_fuzz.py -s -k 'not command_line'"
"""
from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import copy_export, save_untrained_base

from prunedroid.android.device import read_result
from prunedroid.deploy.sidecar import Sidecar
from prunedroid.errors import PrunedroidError
from prunedroid.measure.bench import read_report
from prunedroid.measure.latency import LatencyTable, is_latency, where_measured
from prunedroid.training.checkpoint import Checkpoint
from tests.test_hostile import tree

FUZZ_CASES = int(os.environ.get("PRUNEDROID_FUZZ_CASES", "500"))
HOSTILE_VALUES = [None, True, -1, 0, 1e308, -1e308, float("nan"), float("inf"), "", "garbage", "../../etc/passwd",
                  "/etc/passwd", "..", "a/../../b", "x;touch PWNED", [], {}, [1, 2, 3], {"a": 1}, 2**64, "0" * 64,
                  "\u0000", "model.ptl\n", 10**400]


def mutate_json(value, rng: random.Random, depth: int = 0):
    """`value` with one part replaced by a hostile value, dropped, or retyped."""
    if isinstance(value, dict) and value and depth < 4:
        key = rng.choice(sorted(value))
        changed = dict(value)
        action = rng.random()
        if action < 0.15:
            del changed[key]
        elif action < 0.5:
            changed[key] = rng.choice(HOSTILE_VALUES)
        else:
            changed[key] = mutate_json(value[key], rng, depth + 1)
        return changed
    if isinstance(value, list) and value and depth < 4:
        changed = list(value)
        index = rng.randrange(len(changed))
        changed[index] = mutate_json(changed[index], rng, depth + 1) if rng.random() < 0.5 else rng.choice(
            HOSTILE_VALUES)
        return changed
    return rng.choice(HOSTILE_VALUES)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """Truncated, flipped or replaced bytes."""
    action = rng.random()
    if action < 0.3:
        return data[:rng.randrange(len(data) + 1)]
    if action < 0.7:
        changed = bytearray(data)
        for _ in range(rng.randint(1, 16)):
            if changed:
                changed[rng.randrange(len(changed))] = rng.randrange(256)
        return bytes(changed)
    return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))


def hostile_text(original: dict, rng: random.Random) -> bytes:
    """A JSON file's new content: a mutated document (NaN and Infinity written as Python writes them), or bytes."""
    if rng.random() < 0.75:
        document = original
        for _ in range(rng.randint(1, 3)):
            document = mutate_json(document, rng)
        try:
            return json.dumps(document).encode()
        except (ValueError, OverflowError):
            return b"{"
    return mutate_bytes(json.dumps(original).encode(), rng)


def run_cases(kind: str, folder: Path, case: Callable[[random.Random, Path], None]) -> dict[str, int]:
    """Runs FUZZ_CASES seeded cases in copies of `folder`; each must pass or raise one-line PrunedroidErrors only, and
    leave everything outside its own copy as it was. Returns how many were accepted and refused."""
    outside = tree(folder.parent)
    counts = {"accepted": 0, "refused": 0}
    for seed in range(FUZZ_CASES):
        rng = random.Random(f"{kind}-{seed}")
        work = folder.parent / f"case-{kind}"
        shutil.copytree(folder, work)
        try:
            case(rng, work)
            counts["accepted"] += 1
        except PrunedroidError as error:
            assert "\n" not in str(error).strip(), f"{kind} case {seed}: {error}"
            counts["refused"] += 1
        except Exception as error:  # what the fuzzing is for: report the case that escaped
            raise AssertionError(f"{kind} case {seed} raised {type(error).__name__}: {error}") from error
        finally:
            shutil.rmtree(work)
        assert tree(folder.parent) == outside, f"{kind} case {seed} changed files outside its folder"
    assert counts["refused"] > 0, f"no {kind} case was refused: the mutations are not reaching the checks"
    print(f"fuzz {kind}: {FUZZ_CASES} cases, {counts['accepted']} accepted, {counts['refused']} refused")
    return counts


def test_sidecars(tmp_path, vgg_exports):
    folder = tmp_path / "export"
    sidecar = copy_export(vgg_exports["base"], folder, "model")
    (tmp_path / "decoy.ptl").write_bytes(b"a file beside the folder")
    original = json.loads(sidecar.read_text())

    def case(rng: random.Random, work: Path) -> None:
        path = work / "model.json"
        path.write_bytes(hostile_text(original, rng))
        loaded = Sidecar.read(path)
        for kind in ("ptl", "onnx", "pte"):
            file = loaded.model_file(kind)
            assert file.parent == work and file.stat().st_size == loaded.files[kind].size
        loaded.exported_checkpoint()

    counts = run_cases("sidecar", folder, case)
    assert counts["refused"] >= FUZZ_CASES // 2


def test_checkpoints(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    base = save_untrained_base(folder / "base.pt")
    original = torch.load(base, weights_only=True)
    data = base.read_bytes()

    def case(rng: random.Random, work: Path) -> None:
        path = work / "base.pt"
        if rng.random() < 0.5:
            path.write_bytes(mutate_bytes(data, rng))
        else:
            record = {key: value for key, value in original.items() if key != "state_dict"}
            mutated = mutate_json(json.loads(json.dumps(record)), rng)
            torch.save({**(mutated if isinstance(mutated, dict) else {}), "state_dict": original["state_dict"]}, path)
        Checkpoint.load(path).model()

    run_cases("checkpoint", folder, case)


def test_latency_tables(tmp_path):
    folder = tmp_path / "tables"
    folder.mkdir()
    original = {"where": where_measured("onnxruntime"), "ms": {"conv 3x32x32->4": 0.01, "conv 4x32x32->4 pool": 0.02,
                                          "classifier 4->32->10": 0.003}}

    def case(rng: random.Random, work: Path) -> None:
        path = work / "latency-table.json"
        path.write_bytes(hostile_text(original, rng))
        table = LatencyTable.load(path, measure=lambda shape: 1.0)
        assert all(is_latency(ms) for ms in table.ms.values())

    run_cases("latency", folder, case)


def test_reports_and_device_results(tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    row = {"model": "base", "runtime": "onnxruntime", "test_top1": 0.5, "macs": 10, "params": 5, "file_bytes": 100,
           "latency_median_ms": 1.0, "latency_p90_ms": 1.2, "mac_ratio": 1.0, "latency_ratio": 1.0, "threads": 1}
    report = {"rows": [row, {**row, "model": "pruned"}], "threads": 1}
    result = {"model": "m.pte", "model_bytes": 1000, "runs": 5, "warmup": 1, "threads": 1,
              "latency_ms": {"median": 1.0, "p90": 1.1, "min": 0.9, "max": 1.5}}

    def report_case(rng: random.Random, work: Path) -> None:
        path = work / "bench.json"
        path.write_bytes(hostile_text(report, rng))
        read_report(path)

    def device_case(rng: random.Random, work: Path) -> None:
        checked = read_result(hostile_text(result, rng).decode("utf-8", "replace"), "m", runs=5)
        assert 0 < checked["latency_ms"]["median"] < float("inf")

    run_cases("report", folder, report_case)
    run_cases("device", folder, device_case)


@pytest.mark.parametrize("kind", ["sidecar", "checkpoint", "report"])
def test_the_command_line_answers_hostile_files_in_one_line(tmp_path, vgg_exports, cifar_dir, kind):
    """A few seeded cases through the real command line: exit 2 or success, never a traceback."""
    from conftest import run_invoke

    rng = random.Random(f"cli-{kind}")
    sidecar = copy_export(vgg_exports["base"], tmp_path / "export", "model")
    for _ in range(1 if kind == "sidecar" else 2):  # a bench process costs about 8 s, an evaluate 2 s
        if kind == "sidecar":
            sidecar.write_bytes(hostile_text(json.loads(copy_export(vgg_exports["base"], tmp_path / "fresh",
                                                                    "model").read_text()), rng))
            result = run_invoke("bench", "--models", str(sidecar), "--runs", "10", "--warmup", "0", "--data-dir",
                                str(cifar_dir), "--out", str(tmp_path / "bench"), cwd=tmp_path)
        elif kind == "checkpoint":
            path = tmp_path / "c.pt"
            path.write_bytes(mutate_bytes(save_untrained_base(tmp_path / "b.pt").read_bytes(), rng))
            result = run_invoke("evaluate", "--checkpoint", str(path), "--data-dir", str(cifar_dir), "--test-limit",
                                "10", cwd=tmp_path)
        else:
            report = tmp_path / "r"
            report.with_suffix(".json").write_bytes(mutate_bytes(b'{"rows": []}', rng))
            result = run_invoke("bench-device", "--models", str(sidecar), "--report", str(report), cwd=tmp_path)
        assert "Traceback" not in result.stderr, result.stderr[-2000:]
        if result.returncode:
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
