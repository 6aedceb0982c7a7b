"""--allocation latency: the lookup table of layer latencies and the search that trims by it."""
import json
import math
import re

import pytest

from prunedroid import data as cifar
from prunedroid.errors import PrunedroidError
from prunedroid.flow import prune_stage
from prunedroid.measure.latency import (
    APP_RUNTIME,
    RUNTIMES,
    LatencyOptions,
    LatencyTable,
    Runtime,
    reachable_shapes,
    where_measured,
    write_table,
)
from prunedroid.models import vgg16_spec
from prunedroid.pruned import prune_model
from prunedroid.pruning import Budget
from prunedroid.pruning.allocation import floors, latency_counts, sensitivity_counts
from prunedroid.pruning.groups import LayerShape
from tests.conftest import run_invoke, run_invoke_each, save_untrained_base, vgg_graph
from tests.test_prune import trained_like

TINY = vgg_graph(vgg16_spec(0.125))  # 8..64 channels


def macs_ms(shape: LayerShape) -> float:
    """A runtime whose latency is exactly the layer's MACs (per microsecond)."""
    if shape.size == 0:
        return shape.inputs * shape.outputs / 1e6
    return shape.inputs // shape.groups * shape.outputs * (shape.size // shape.stride) ** 2 * shape.kernel ** 2 / 1e6


def shape_of(key: str) -> LayerShape:
    """The LayerShape a table key names (LayerShape.key read back)."""
    if key.startswith("linear "):
        inputs, outputs = key.removeprefix("linear ").split("->")
        return LayerShape(int(inputs), int(outputs))
    found = re.fullmatch(r"conv (\d+)x(\d+)x\d+->(\d+) k(\d+) s(\d+) p(\d+)(?: g(\d+))?", key)
    assert found, key
    inputs, size, outputs, kernel, stride, padding, groups = found.groups(default="1")
    return LayerShape(int(inputs), int(outputs), int(size), int(kernel), int(stride), int(padding), int(groups))


def even_curves(graph) -> list:
    """The same loss for the same share removed in every group: only the cost tells groups apart."""
    return [[(c, 0.0), (c // 2, 10.0), (max(1, c // 4), 40.0)] for c in graph.channels]


def predict(table: LatencyTable, graph):
    return lambda counts: table.model_ms(graph, counts)


def predicted_reduction(table: LatencyTable, graph, counts) -> float:
    return 1 - table.model_ms(graph, counts) / table.model_ms(graph, graph.channels)


def test_layer_shapes_follow_the_network():
    shapes = TINY.layer_shapes()
    assert len(shapes) == 15  # 13 convs, the classifier's two Linear layers
    assert shapes[0] == LayerShape(3, 8, 32, 3, 1, 1) and shapes[2] == LayerShape(8, 16, 16, 3, 1, 1)
    assert shapes[12].size == 2 and shapes[-2] == LayerShape(64, 64)  # 64 channels x 1 x 1 into the classifier
    assert TINY.layer_shapes([4] * 13)[-2] == LayerShape(4, 64)
    assert sum(macs_ms(shape) for shape in shapes) == pytest.approx(TINY.macs() / 1e6)
    depthwise = LayerShape(8, 8, 16, 3, 2, 1, 8)
    assert all(shape_of(shape.key) == shape for shape in (*shapes, depthwise))  # the tests' key reader


def test_a_runtime_slow_on_some_layers_gets_those_layers_pruned_more():
    """Latency = MACs, except the 4x4 layers (7, 8, 9) run 20x slower: the latency allocation takes more from them
    than the MAC-cost sensitivity allocation does, and meets its latency target above the floor."""
    slow = lambda shape: macs_ms(shape) * (20 if shape.size == 4 else 1)
    table = LatencyTable(measure=slow)
    budget = Budget.of(latency_reduction=0.5, allocation="latency", min_keep=0.2)
    counts = latency_counts(TINY, budget, even_curves(TINY), predict(table, TINY))
    by_macs = sensitivity_counts(TINY, Budget.of(mac_reduction=TINY.mac_reduction(counts), allocation="sensitivity",
                                              min_keep=0.2), even_curves(TINY))
    assert abs(predicted_reduction(table, TINY, counts) - 0.5) <= 0.01
    assert all(low <= c for low, c in zip(floors(TINY, budget), counts))
    assert sum(counts[7:10]) < sum(by_macs[7:10]), (counts, by_macs)


def test_steps_that_save_nothing_are_walked_through_to_the_next_faster_count():
    """A runtime that computes channels in blocks of 8: from 64, a step of 4 saves nothing; the search looks ahead,
    so layers still shrink and end on whole blocks."""
    block = lambda channels: channels if channels == 3 else 8 * math.ceil(channels / 8)
    blocks = lambda shape: macs_ms(shape) if shape.size == 0 else macs_ms(
        LayerShape(block(shape.inputs), block(shape.outputs), shape.size, shape.kernel, shape.stride, shape.padding))
    table = LatencyTable(measure=blocks)
    counts = latency_counts(TINY, Budget.of(latency_reduction=0.4, allocation="latency", round_to=4), even_curves(TINY),
                            predict(table, TINY))
    assert abs(predicted_reduction(table, TINY, counts) - 0.4) <= 0.01
    assert counts != list(TINY.channels) and all(c % 8 == 0 for c in counts), counts


def test_the_table_is_kept_and_reused_on_the_same_machine(tmp_path):
    path = tmp_path / "latency.json"
    table = LatencyTable.load(path, measure=macs_ms)
    first = table.model_ms(TINY, TINY.channels)
    table.save()
    again = LatencyTable.load(path, measure=lambda shape: pytest.fail(f"measured {shape} twice"))
    assert again.model_ms(TINY, TINY.channels) == first and again.measured == 0
    stored = json.loads(path.read_text())
    stored["where"]["cpu"] = "another CPU"
    path.write_text(json.dumps(stored))
    with pytest.raises(PrunedroidError, match="measured with .*another CPU.*delete it"):
        LatencyTable.load(path)
    path.write_text("{not json")
    with pytest.raises(PrunedroidError, match="not a latency table"):
        LatencyTable.load(path)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_layer_is_measured_in_each_runtime(runtime):
    measure = RUNTIMES[runtime].layer_ms
    small, large = measure(LayerShape(8, 8, 8, 3, 1, 1)), measure(LayerShape(64, 64, 32, 3, 1, 1))
    assert 0 < small < large


def test_a_table_of_another_runtime_is_refused(tmp_path):
    path = tmp_path / "table.json"
    table = LatencyTable.load(path, "onnxruntime", measure=macs_ms)
    table.model_ms(TINY, TINY.channels)
    table.save()
    assert json.loads(path.read_text())["where"] == where_measured("onnxruntime")
    with pytest.raises(PrunedroidError, match=r"measured with .*onnxruntime.*executorch .*\(XNNPACK, int8\)"):
        LatencyTable.load(path, "executorch-int8", measure=macs_ms)


@pytest.mark.parametrize("options, message", [
    (dict(latency_reduction=0.5), "go together"),
    (dict(mac_reduction=0.5, allocation="latency"), "go together"),
    (dict(latency_reduction=1.5, allocation="latency"), r"in \(0, 1\)"),
])
def test_latency_budgets_are_checked(options, message):
    with pytest.raises(PrunedroidError, match=message):
        Budget.of(**options)


def test_an_unreachable_latency_target_names_the_fix():
    with pytest.raises(PrunedroidError, match="latency reduction cannot be reached.*lower `min_keep`"):
        latency_counts(TINY, Budget.of(latency_reduction=0.9, allocation="latency", min_keep=0.6), even_curves(TINY),
                       predict(LatencyTable(measure=macs_ms), TINY))


def test_prune_reports_the_predicted_latency_and_saves_the_table(synthetic_data, tmp_path, monkeypatch):
    # Layers timed by their MACs, not the host's onnxruntime: a tiny model's real layer timings are mostly overhead
    # and noise (on a busy host its floors have been predicted slower than the whole model).
    monkeypatch.setitem(RUNTIMES, "onnxruntime", Runtime(macs_ms, RUNTIMES["onnxruntime"].version))
    model = trained_like(vgg16_spec(0.125))
    table = tmp_path / "latency-table-onnxruntime.json"
    budget = Budget.of(latency_reduction=0.3, allocation="latency", round_to=4)
    pruned, report = prune_model(model, "l1", budget, holdout=synthetic_data.holdout.head(64),
                                 latency=LatencyOptions("onnxruntime"), latency_folder=tmp_path)
    predicted = report["predicted_ms"]
    assert report["allocation"] == "latency" and len(report["curves"]) == 13
    assert abs(1 - predicted["after"] / predicted["before"] - 0.3) <= 0.01
    assert all(c % 4 == 0 for c in pruned.spec.conv_channels)
    assert report["latency_runtime"]["runtime"].startswith("onnxruntime")
    assert len(json.loads(table.read_text())["ms"]) >= 14


def test_a_prune_times_layers_in_the_runtime_asked_for_and_keeps_its_table_by_name(synthetic_data, tmp_path,
                                                                                     monkeypatch):
    # The runtime's own timing is swapped for MACs (a real ExecuTorch table would take minutes); what is checked is
    # which runtime's table a prune reads, writes and records.
    for runtime in RUNTIMES:
        monkeypatch.setitem(RUNTIMES, runtime, Runtime(macs_ms, RUNTIMES[runtime].version))
    base = save_untrained_base(tmp_path / "base.pt")
    data = cifar.Cifar10(synthetic_data.train, synthetic_data.holdout.head(64), synthetic_data.test.head(32))
    budget = Budget.of(latency_reduction=0.3, allocation="latency", round_to=4)
    default = prune_stage(base, tmp_path / "pruned", "l1", budget, data, 0)
    assert default["latency_runtime"] == where_measured(APP_RUNTIME)
    assert default["latency_table"] == str(tmp_path / "latency-table-executorch.json")
    int8 = prune_stage(base, tmp_path / "pruned-int8", "l1", budget, data, 0, LatencyOptions("executorch-int8"))
    assert "XNNPACK, int8" in int8["latency_runtime"]["runtime"]
    assert json.loads((tmp_path / "latency-table-executorch-int8.json").read_text())["where"] == \
        int8["latency_runtime"]
    with pytest.raises(PrunedroidError, match="--latency-runtime is one of onnxruntime, executorch"):
        LatencyOptions("tflite")


@pytest.mark.parametrize("round_to, min_keep", [(1, 0.1), (4, 0.3), (8, 0.1)])
def test_the_reachable_grid_holds_every_shape_a_search_times(round_to, min_keep):
    visited = []
    table = LatencyTable(measure=lambda shape: visited.append(shape.key) or macs_ms(shape))
    budget = Budget.of(latency_reduction=0.4, allocation="latency", round_to=round_to, min_keep=min_keep)
    latency_counts(TINY, budget, even_curves(TINY), predict(table, TINY))
    grid = {shape.key for shape in reachable_shapes(TINY, budget)}
    assert visited and set(visited) <= grid
    assert len(grid) == len(reachable_shapes(TINY, budget))  # each shape once


def test_latency_table_from_the_command_line_is_what_prune_then_reads(tmp_path, cifar_dir):
    base = save_untrained_base(tmp_path / "base" / "checkpoint.pt", width=0.125)
    made = run_invoke("latency-table", "--checkpoint", str(base), "--round-to", "16", "--latency-runtime",
                      "onnxruntime", cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    table = tmp_path / "latency-table-onnxruntime.json"
    measured = json.loads(table.read_text())
    assert "shapes (" in made.stdout and len(measured["ms"]) >= 14
    # The prune below reads the table as measured, but with each shape's time made its MACs: the host's timings of
    # layers this small are overhead and noise, which could make a 10% target unreachable.
    write_table(table, measured["where"], {key: macs_ms(shape_of(key)) for key in measured["ms"]})
    before = table.read_text()
    pruned = run_invoke("prune", "--checkpoint", str(base), "--allocation", "latency", "--latency-reduction", "0.1",
                        "--round-to", "16", "--latency-runtime", "onnxruntime", "--data-dir", str(cifar_dir),
                        cwd=tmp_path)
    assert pruned.returncode == 0, pruned.stderr[-2000:]
    assert table.read_text() == before  # every shape the search needed was in the table
    wrong = [(("--device",), "missing --out"),
             (("--device", "--out", "t.json", "--latency-runtime", "onnxruntime"), "the app times .pte programs")]
    refusals = run_invoke_each([(("latency-table", "--checkpoint", str(base), *args), tmp_path) for args, _ in wrong])
    for (_, message), failed in zip(wrong, refusals):
        assert failed.returncode == 2 and message in failed.stderr, failed.stderr[-2000:]
