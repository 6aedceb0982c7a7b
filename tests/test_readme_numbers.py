"""Every number the README's results quote - the quick pipeline's run under "What you get" and the "Results at a
glance" answers - is bound to one value: an expression over the results files it links to, with its rounding. A
changed digit or sign in the README, or a result that moves, fails; the mutation check below shows that every
last-digit and sign change is caught (the old check, "the number is somewhere in the linked files", missed 44%).

To change a row: change the README, then its row here (each number in order, as written, and the expression it
comes from). A number no results file records (the goal's half point, another machine's report) is a literal, with
where it comes from.
"""
import json
import re
import statistics
from collections.abc import Callable

import pytest
from conftest import ROOT

from prunedroid.measure.bench import SLOW_FOR_MACS

# A number as the README writes it: a sign, digits with thousands commas, decimals; not part of a name (Q1, W2, H100).
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:,\d{3})*(?:\.\d+)?")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def pct(fraction: float) -> float:
    return 100 * fraction


def seeds(cell: dict) -> list[float]:
    """A fine-tuned cell's top-1 per seed: the recipe's, then the others."""
    return [cell["top1_finetuned"], *cell.get("top1_finetuned_seeds", {}).values()]


def lat(result: dict, model: str, runtime: str, key: str = "latency_ratio") -> float:
    return result["latency"]["rows"][f"{model}/{runtime}"][key]


def instr(result: dict, model: str, runtime: str) -> float:
    return next(row["ratio"] for row in result["rows"] if (row["model"], row["runtime"]) == (model, runtime))


def sensitivity_gains(result: dict) -> list[float]:
    """Per method, sensitivity minus uniform allocation on the test images (points)."""
    return [pct(gap["test"]["difference"]) for name, gap in result["paired"].items()
            if re.fullmatch(r"(.+)/sensitivity vs \1/uniform", name)]


HELPERS = {"pct": pct, "mean": statistics.mean, "sd": statistics.stdev, "seeds": seeds, "lat": lat, "instr": instr,
           "sensitivity_gains": sensitivity_gains, "SLOW_FOR_MACS": SLOW_FOR_MACS}

S16, S8, U1 = "defaults_quick['cells']['sensitivity/r16']", "defaults_quick['cells']['sensitivity/r8']", \
    "defaults_quick['cells']['uniform/r1']"
SCP_WIDE = "scp_wide['paired']['0.50/scp-chebyshev-lstsq vs 0.50/l1']['test']"
SCP_QUICK = "scp_quick['paired']['0.50/scp-cosine-lstsq vs 0.50/l1']['test']"
L1_GAIN = "frontier_wide['paired']['0.70/l1-sensitivity vs 0.70/l1-uniform']['test']"
GOAL_65, GOAL_70 = "goal_wide['cells']['0.65/1-step/8-epochs']", "goal_wide['cells']['0.70/1-step/8-epochs']"
GOAL_W3 = "goal_wide_s1['cells']['0.60/1-step/8-epochs']"
CW, CQ = "controls_wide['results']", "controls_quick['results']"
BN_L1 = "bn_calibration['rows'][3]"

# Per README row (its question), each number of its answer in order: (as written, the expression it is).
ROWS: dict[str, list[tuple[str, str]]] = {
    "Which recipe does the pipeline ship?": [
        ("6", "len(defaults_quick['cells'])"),
        ("50", f"pct({U1}['budget']['mac_reduction'])"),
        ("3", f"len(seeds({S16}))"),
        ("1.1", "SLOW_FOR_MACS"),
        ("16", f"{S16}['round_to']"),
        ("82.68", f"pct(mean(seeds({S16})))"),
        ("0.34", f"pct(sd(seeds({S16})))"),
        ("0.514", "lat(defaults_quick, 'sensitivity-r16', 'executorch')"),
        ("0.495", "lat(defaults_quick, 'sensitivity-r16', 'executorch', 'latency_ratio_min')"),
        ("0.527", "lat(defaults_quick, 'sensitivity-r16', 'executorch', 'latency_ratio_max')"),
        ("0.531", "lat(defaults_quick, 'sensitivity-r16', 'onnxruntime')"),
        ("0.583", "instr(instructions_defaults_quick, 'sensitivity-r16', 'onnxruntime')"),
        ("82.33", f"pct(mean(seeds({U1})))"),
        ("0.656", "lat(defaults_quick, 'uniform-r1', 'executorch')"),
        ("1.101", "lat(defaults_quick, 'uniform-r1', 'onnxruntime')"),
        ("1.384", "instr(instructions_defaults_quick, 'uniform-r1', 'onnxruntime')"),
        ("8", f"{S8}['round_to']"),
        ("83.37", f"pct(mean(seeds({S8})))"),
        ("0.572", "lat(defaults_quick, 'sensitivity-r8', 'executorch')"),
    ],
    "Which method keeps most accuracy right after pruning?": [
        ("50", "pct(compare_quick['cells']['0.50/scp-cosine']['target'])"),
        ("64.0", "pct(compare_quick['cells']['0.50/scp-cosine']['top1_pruned'])"),
        ("71.7", "pct(compare_wide['cells']['0.50/scp-cosine']['top1_pruned'])"),
        ("11.1", "pct(compare_quick['cells']['0.50/l1']['top1_pruned'])"),
        ("16.6", "pct(compare_wide['cells']['0.50/l1']['top1_pruned'])"),
    ],
    "...and after a 3-epoch fine-tune?": [
        ("50", "pct(compare_wide['cells']['0.50/l1']['target'])"),
        ("88.08", "pct(compare_wide['cells']['0.50/l1']['top1_finetuned'])"),
        ("88.11", "pct(compare_wide['cells']['0.50/scp-cosine']['top1_finetuned'])"),
        ("88.26", "pct(compare_wide['cells']['0.50/kmeans-blog']['top1_finetuned'])"),
        ("3", f"{SCP_WIDE}['runs']"),
        ("-0.11", f"pct({SCP_WIDE}['difference'])"),
        ("-0.49", f"pct({SCP_WIDE}['low'])"),
        ("+0.26", f"pct({SCP_WIDE}['high'])"),
        ("-0.52", f"pct({SCP_QUICK}['difference'])"),
        ("-1.00", f"pct({SCP_QUICK}['low'])"),
        ("-0.04", f"pct({SCP_QUICK}['high'])"),
    ],
    "Does re-measuring BatchNorm explain SCP's head start?": [
        ("11.1", f"pct({BN_L1}['trained'])"),
        ("63.2", f"pct({BN_L1}['as_is_1024'])"),
        ("50", f"pct({BN_L1}['target'])"),
        ("16.6", "pct(compare_wide['cells']['0.50/l1']['top1_pruned'])"),
        ("70.0", "pct(compare_wide['cells']['0.50/l1']['top1_recalibrated'])"),
        ("71.7", "pct(compare_wide['cells']['0.50/scp-cosine']['top1_pruned'])"),
        ("76.6", "pct(compare_wide['cells']['0.50/scp-cosine-norm']['top1_pruned'])"),
    ],
    "SCP's threshold mode, as in the report?": [
        ("0.70", "sweep_quick['cells']['cosine/0.70']['threshold']"),
        ("28", "pct(sweep_quick['cells']['cosine/0.70']['mac_reduction'])"),
        ("83.6", "pct(sweep_quick['cells']['cosine/0.70']['top1_finetuned'])"),
        ("0.60", "sweep_quick['cells']['cosine/0.60']['threshold']"),
        ("58", "pct(sweep_quick['cells']['cosine/0.60']['mac_reduction'])"),
        ("78.6", "pct(sweep_quick['cells']['cosine/0.60']['top1_finetuned'])"),
    ],
    "K-means clustering as in the blog?": [
        ("2", "2  # K = N/2, the blog's setting (kmeans_settings.py)"),
        ("74", "pct(kmeans_quick['cells']['kmeans-blog']['mac_reduction'])"),
        ("77.3", "pct(kmeans_quick['cells']['kmeans-blog']['top1_finetuned'])"),
        ("78.3", "pct(kmeans_quick['cells']['l1-half']['top1_finetuned'])"),
    ],
    "Does it matter how much each layer keeps?": [
        ("3", "frontier_wide['finetune']['epochs']"),
        ("70", "pct(frontier_wide['cells']['0.70/l1-uniform']['target'])"),
        ("+0.86", f"pct({L1_GAIN}['difference'])"),
        ("+0.36", f"pct({L1_GAIN}['low'])"),
        ("+1.35", f"pct({L1_GAIN}['high'])"),
        ("87.34", "pct(frontier_wide['cells']['0.70/scp-cosine-sensitivity']['top1_finetuned'])"),
        ("85.66", "pct(frontier_wide['cells']['0.70/scp-cosine-uniform']['top1_finetuned'])"),
        ("0.5", "0.5  # the goal: within half a point of the base (goal.py's verdict)"),
        ("8", f"{GOAL_65}['epochs']"),
        ("65", f"pct({GOAL_65}['target'])"),
        ("-0.37", f"pct({GOAL_65}['vs_base']['test']['difference'])"),
        ("-0.88", f"pct({GOAL_65}['vs_base']['test']['low'])"),
        ("+0.10", f"pct({GOAL_65}['vs_base']['test']['high'])"),
        ("60", f"pct({GOAL_W3}['target'])"),
        ("-0.51", f"pct({GOAL_W3}['vs_base']['test']['difference'])"),
        ("70", f"pct({GOAL_70}['target'])"),
        ("-0.68", f"pct({GOAL_70}['vs_base']['test']['difference'])"),
    ],
    "Where does \"no loss\" come from?": [
        ("60", "pct(controls_wide['target'])"),
        ("3", f"len({CW}['sensitivity / 3 epochs']['per_seed']['test'])"),
        ("3", "controls_wide['recipes']['short']['epochs']"),
        ("-0.75", f"pct({CW}['sensitivity / 3 epochs']['vs_base']['test']['difference'])"),
        ("-1.21", f"pct({CW}['sensitivity / 3 epochs']['vs_base']['test']['low'])"),
        ("-0.30", f"pct({CW}['sensitivity / 3 epochs']['vs_base']['test']['high'])"),
        ("8", "controls_wide['recipes']['plain']['epochs']"),
        ("-0.09", f"pct({CW}['sensitivity / 8 epochs']['vs_base']['test']['difference'])"),
        ("-0.08", f"pct({CW}['sensitivity / 8 epochs, distilled']['vs_base']['test']['difference'])"),
        ("-0.50", f"pct({CW}['sensitivity / 8 epochs, distilled']['vs_base']['test']['low'])"),
        ("+0.33", f"pct({CW}['sensitivity / 8 epochs, distilled']['vs_base']['test']['high'])"),
        ("-0.83", f"pct({CW}['uniform / 8 epochs, distilled']['vs_base']['test']['difference'])"),
        ("23", "controls_wide['base']['epochs'] + controls_wide['recipes']['plain']['epochs']"),  # base's + fine-tune's
        ("-0.02", f"pct({CW}['sensitivity / from scratch, 23 epochs']['vs_base']['test']['difference'])"),
        ("-0.53", f"pct({CW}['sensitivity / from scratch, 23 epochs']['vs_base']['test']['low'])"),
        ("+0.48", f"pct({CW}['sensitivity / from scratch, 23 epochs']['vs_base']['test']['high'])"),
        ("+8", "controls_wide['recipes']['plain']['epochs']"),
        ("+0.67", f"pct({CW}['base / +8 epochs']['vs_base']['test']['difference'])"),
        ("-2.06", f"pct({CQ}['sensitivity / 3 epochs']['vs_base']['test']['difference'])"),
        ("-0.80", f"pct({CQ}['sensitivity / 8 epochs']['vs_base']['test']['difference'])"),
        ("+0.97", f"pct({CQ}['base / +8 epochs']['vs_base']['test']['difference'])"),
        ("1", f"len({CQ}['base / +8 epochs']['per_seed']['test'])"),
    ],
    "Time layers in which runtime?": [
        ("0.490", "lat(latency_runtime_quick, 'executorch-table-0_50', 'executorch')"),
        ("0.511", "lat(latency_runtime_quick, 'onnxruntime-table-0_40', 'executorch')"),
    ],
    "ResNet-56, MobileNetV2?": [
        ("56", "56  # the model's name, ResNet-56"),
        ("84.72", "pct(architectures_resnet56_quick['base']['test_top1'])"),
        ("-50", "-pct(architectures_resnet56_quick['cells']['l1/uniform']['target'])"),
        ("1.8", "min(sensitivity_gains(architectures_resnet56_quick))"),
        ("2.6", "max(sensitivity_gains(architectures_resnet56_quick))"),
        ("82.50", "pct(architectures_mobilenetv2_quick['base']['test_top1'])"),
        ("-30", "-pct(architectures_mobilenetv2_quick['cells']['l1/uniform']['target'])"),
        ("0.5", "min(sensitivity_gains(architectures_mobilenetv2_quick))"),
        ("0.9", "max(sensitivity_gains(architectures_mobilenetv2_quick))"),
        ("2.01", "lat(architectures_mobilenetv2_quick, 'l1-uniform', 'onnxruntime')"),
        ("1.848", "instr(instructions_mobilenetv2_quick, 'l1-uniform', 'onnxruntime')"),
    ],
    "Does distilling from the base help the short fine-tune?": [
        ("50", "pct(distill_quick['target'])"),
        ("-0.20", "pct(distill_quick['paired']['l1: distilled vs plain']['difference'])"),
        ("-0.53", "pct(distill_quick['paired']['l1: distilled vs plain']['low'])"),
        ("+0.15", "pct(distill_quick['paired']['l1: distilled vs plain']['high'])"),
        ("+0.03", "pct(distill_quick['paired']['scp: distilled vs plain']['difference'])"),
        ("-0.27", "pct(distill_quick['paired']['scp: distilled vs plain']['low'])"),
        ("+0.32", "pct(distill_quick['paired']['scp: distilled vs plain']['high'])"),
        ("0.5", "distill_quick['cells']['l1/distilled']['recipe']['distill_weight']"),
        ("4", "distill_quick['cells']['l1/distilled']['recipe']['distill_temperature']"),
        ("3", "distill_quick['cells']['l1/distilled']['recipe']['epochs']"),
    ],
    "What do the presets reach?": [
        ("84.52", "pct(training['runs'][0]['test_top1_here'])"),
        ("508", "training['runs'][0]['train_seconds']"),
        ("160", "training['runs'][1]['epochs']"),
        ("93.70", "pct(training['runs'][1]['test_top1_here'])"),
        ("449", "training['runs'][1]['train_seconds']"),
        ("84.72", "pct(training_resnet56_quick['runs'][0]['test_top1_here'])"),
        ("82.50", "pct(training_mobilenetv2_quick['runs'][0]['test_top1_here'])"),
        ("0.5", "training_mobilenetv2_quick['runs'][0]['recipe']['width']"),
    ],
}

PIPELINE = "benchmarks/results/pipeline_quick/"  # the run "What you get" quotes: its bench.json, log and report
BENCH = f"{PIPELINE}bench.json"
# The prose around the pipeline's table, each number in order; the table's rows are bench.json's (PIPELINE_COLUMNS).
PIPELINE_PROSE: list[tuple[str, str]] = [
    ("2", "bench['machine']['cores']"),
    ("10", "wall_seconds // 60"),
    ("46", "wall_seconds % 60"),
    ("84.54", "84.54  # top-1 of the base on an Intel Xeon: reported in issue 47, no run of it here"),
    ("82.97", "82.97  # the fine-tuned model's, the same report"),
    ("1", "bench['threads']"),
    ("5", "bench['processes']"),
    ("50", "pct(bench['config']['budget']['mac_reduction'])"),
    ("16", "bench['config']['budget']['round_to']"),
    ("3", "bench['config']['finetune']['epochs']"),
    ("1.10", "lat(defaults_quick, 'uniform-r1', 'onnxruntime')"),
]
# Each column of the pipeline's table: the bench.json field it shows, as written (scale, decimals).
PIPELINE_COLUMNS = {"test top-1": ("test_top1", 100, 2), "MACs": ("macs", 1e-6, 2), "file": ("file_bytes", 1e-6, 2),
                    "median ms": ("latency_median_ms", 1, 3), "latency vs base": ("latency_ratio", 1, 2)}
RANGE = ("latency_ratio_min", "latency_ratio_max")  # "[min-max]" after a pruned model's ratio, 2 decimals
MODEL_OF = {"base": "base", "pruned, fine-tuned": "pruned"}


def pipeline_section(text: str) -> tuple[str, str]:
    """The prose around the quick pipeline's table under "What you get", and the table."""
    section = text.split("One such run", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    prose = "\n".join(line for line in section.splitlines() if not line.startswith("|"))
    return prose, table


def pipeline_table_problems(table: str, bench: dict) -> list[str]:
    """Each row of the table against bench.json's row of that model and runtime, column by column."""
    lines = table.splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    if header != ["model", "runtime", *PIPELINE_COLUMNS]:
        return [f"the table's columns are {header}, bound {['model', 'runtime', *PIPELINE_COLUMNS]}"]
    rows = {(row["model"], row["runtime"]): row for row in bench["rows"]}
    problems = []
    for line in lines[2:]:
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        row = rows[MODEL_OF[cells["model"]], cells["runtime"]]
        for column, (field, scale, decimals) in PIPELINE_COLUMNS.items():
            expected = [f"{row[field] * scale:.{decimals}f}"]
            if column == "latency vs base" and row["model"] != "base":
                expected += [f"{row[key]:.2f}" for key in RANGE]
            if NUMBER.findall(cells[column]) != expected:
                problems.append(f"{cells['model']} {cells['runtime']} {column}: {cells[column]}, bound {expected}")
    return problems


def pipeline_problems(text: str) -> list[str]:
    prose, table = pipeline_section(text)
    bench = json.loads((ROOT / BENCH).read_text())
    wall = re.search(r"^real\t(\d+)m([\d.]+)s$", (ROOT / PIPELINE / "pipeline.log").read_text(), flags=re.M)
    assert wall, "pipeline.log ends with the run's `time`"
    defaults = json.loads((ROOT / "benchmarks/results/defaults_quick.json").read_text())
    results = {"bench": bench, "defaults_quick": defaults,
               "wall_seconds": round(60 * int(wall.group(1)) + float(wall.group(2)))}
    return row_problems(prose, PIPELINE_PROSE, results) + pipeline_table_problems(table, bench)


def readme_rows(text: str) -> dict[str, tuple[str, list[str]]]:
    """question -> (answer, the result files its evidence links to) for each row of "Results at a glance"."""
    table = text.split("## Results at a glance", 1)[1].split("\n\n|", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in ("|" + table).splitlines()[2:]:
        question, answer, evidence = (cell.strip() for cell in line.strip("|").split("|"))
        rows[question] = (answer, LINK.findall(evidence))
    return rows


def written(value: float, like: str) -> str:
    """`value` written as `like` is: its decimals, a "+" where it has one, thousands commas where it has them."""
    decimals = len(like.split(".")[1]) if "." in like else 0
    return f"{value:{'+' if like.startswith('+') else ''}{',' if ',' in like else ''}.{decimals}f}"


def row_problems(answer: str, bound: list[tuple[str, str]], results: dict[str, dict]) -> list[str]:
    """What is wrong with one row: numbers unlike the bound ones, or bound values that round to something else."""
    quoted = NUMBER.findall(answer)
    if quoted != [number for number, _ in bound]:
        return [f"quotes {quoted}, bound {[number for number, _ in bound]}"]
    names = {**HELPERS, **results}
    problems = []
    for number, expression in bound:
        value = eval(expression, {"__builtins__": {"len": len, "min": min, "max": max}}, names)  # noqa: S307
        if written(value, number) != number:
            problems.append(f"{number} is {expression} = {value!r}, written {written(value, number)}")
    return problems


def linked_results(links: list[str]) -> dict[str, dict]:
    """The JSON beside each linked results page, by its name (stem)."""
    return {(ROOT / link).stem: json.loads((ROOT / link).with_suffix(".json").read_text()) for link in links}


@pytest.fixture(scope="module")
def rows() -> dict[str, tuple[str, list[str]]]:
    return readme_rows((ROOT / "README.md").read_text())


def test_every_row_is_bound(rows):
    assert list(rows) == list(ROWS)


@pytest.mark.parametrize("question", list(ROWS))
def test_each_number_is_the_value_it_is_bound_to(rows, question):
    answer, links = rows[question]
    assert all(link.startswith(("benchmarks/results/", "benchmarks/archive/results/")) for link in links), links
    problems = row_problems(answer, ROWS[question], linked_results(links))
    assert not problems, f"README row {question!r}: " + "; ".join(problems)


def test_the_pipeline_run_is_quoted_as_it_ran():
    problems = pipeline_problems((ROOT / "README.md").read_text())
    assert not problems, "README, What you get: " + "; ".join(problems)


def mutations(number: str) -> list[str]:
    """The last digit one up and one down, and the sign flipped."""
    head, last = number[:-1], int(number[-1])
    flipped = number[1:] if number[0] == "-" else "-" + number.lstrip("+")
    return [head + str((last + 1) % 10), head + str((last - 1) % 10), flipped]


def mutants(answer: str) -> list[str]:
    """`answer` with one number changed, for every number and each of its mutations."""
    spans = [match.span() for match in NUMBER.finditer(answer)]
    return [answer[:start] + changed + answer[end:] for start, end in spans
            for changed in mutations(answer[start:end])]


def test_every_last_digit_and_sign_change_is_caught(rows):
    """The checks above, run on the README with one number changed at a time: none slips through."""
    text = (ROOT / "README.md").read_text()
    checked: Callable[[str, str], bool] = lambda question, answer: bool(
        row_problems(answer, ROWS[question], linked_results(rows[question][1])))
    missed, total = [], 0
    for question, (answer, _) in rows.items():
        for mutant in mutants(answer):
            total += 1
            if not checked(question, mutant):
                missed.append(mutant)
    section = text.split("One such run", 1)[1].split("\n## ", 1)[0]
    for mutant in mutants(section):
        total += 1
        if not pipeline_problems(text.replace(section, mutant)):
            missed.append(mutant)
    assert total > 400 and not missed, f"{len(missed)} of {total} changes not caught: {missed[:3]}"
