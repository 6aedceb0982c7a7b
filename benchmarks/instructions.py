"""Instructions per batch-1 inference, counted by valgrind's callgrind, for exported models in every runtime: a
latency proxy that no other job on a shared machine can disturb (a timing ratio here has moved by up to 1.7x between
processes; an instruction count repeats). Each runtime runs one thread; the count covers only the inference calls
(callgrind's client requests start and stop it around them, after a warm-up), divided by the number of calls.

    python benchmarks/instructions.py --models runs/x/export/base.json,runs/x/export/pruned.json \\
        --out benchmarks/results/instructions_x

The first model is the base the ratios are to. Caveats: valgrind emulates the CPU up to AVX2 and reports no AVX-512
to the program, so the runtimes take their AVX2 kernels here, not the AVX-512 ones this host would run natively (nor
a phone's ARM ones); and instructions are not time - memory stalls and instruction-level parallelism do not count.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from prunedroid.deploy.sidecar import Sidecar
from prunedroid.errors import PrunedroidError
from prunedroid.measure.bench import load_models, speed_for_macs
from prunedroid.measure.callgrind import count_calls, count_instructions
from prunedroid.measure.report import markdown_table, write_results


def sidecar_calls(sidecars: list[str], runtimes: set[str] | None = None) -> dict[str, Callable[[], object]]:
    """"model/runtime" -> one batch-1 inference of that exported model in that runtime (one thread); only the
    runtimes in `runtimes` when given."""
    models = load_models(sidecars, threads=1)
    generator = torch.Generator().manual_seed(0)
    calls: dict[str, Callable[[], object]] = {}
    for name, (sidecar, predictors, _) in models.items():
        image = torch.randn(tuple(sidecar.input_shape), generator=generator)
        for runtime, (predict, _) in predictors.items():
            if runtimes is None or runtime in runtimes:
                calls[f"{name}/{runtime}"] = functools.partial(predict, image)
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="sidecars (.json) of exported models, the base first")
    parser.add_argument("--out", default="benchmarks/results/instructions")
    parser.add_argument("--calls", type=int, default=10, help="counted inference calls per model and runtime")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="separate valgrind runs, to show the counts repeat")
    parser.add_argument("--runtimes", default=None,
                        help="count only these runtimes (comma list, e.g. onnxruntime,executorch); default: all")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # the helper library, in the process valgrind runs
    args = parser.parse_args()
    sidecars = args.models.split(",")
    if args.worker:
        runtimes = set(args.runtimes.split(",")) if args.runtimes else None
        count_calls(sidecar_calls(sidecars, runtimes), args.calls, args.warmup, Path(args.worker))
        return
    worker = [sys.executable, __file__, "--models", args.models, "--calls", str(args.calls), "--warmup",
              str(args.warmup), *(["--runtimes", args.runtimes] if args.runtimes else []), "--worker"]
    try:
        results = count_instructions(worker, args.calls, args.processes)
    except PrunedroidError as error:
        sys.exit(str(error))
    macs = {sidecar.name: sidecar.macs for sidecar in map(Sidecar.read, sidecars)}
    keys = list(results[0])
    base = keys[0].split("/")[0]
    rows = []
    for key in keys:
        model, runtime = key.split("/")
        counts = [result[key] for result in results]
        ratios = [result[key] / result[f"{base}/{runtime}"] for result in results]
        rows.append({"model": model, "runtime": runtime, "instructions": statistics.median(counts),
                     "spread": (max(counts) - min(counts)) / statistics.median(counts),
                     "ratio": statistics.median(ratios), "mac_ratio": macs[model] / macs[base]})
    table = [{"model": row["model"], "runtime": row["runtime"],
              "instructions per inference (M)": f"{row['instructions'] / 1e6:.2f}",
              "max-min over processes": f"{100 * row['spread']:.3f}%", "vs base": f"{row['ratio']:.3f}x",
              "MACs vs base": f"{row['mac_ratio']:.3f}x",
              "instructions / MAC ratio": speed_for_macs(row["ratio"], row["mac_ratio"])}
             for row in rows]
    write_results(args.out, {"calls": args.calls, "warmup": args.warmup, "processes": args.processes,
                             "models": sidecars, "rows": rows, "per_process": results},
                  "Instructions per batch-1 inference (callgrind), every runtime",
                  markdown_table(table, list(table[0])), notes=NOTES.format(processes=args.processes, calls=args.calls))


NOTES = """
Counted by `valgrind --tool=callgrind` over {calls} calls per model and runtime after a warm-up, one thread, in
{processes} separate processes; "vs base" is the median over the processes of the ratio to the first model in the
same runtime. Under valgrind the runtimes run their AVX2 kernels (valgrind does not emulate AVX-512), so the counts
describe those code paths; instructions are not time (memory stalls and parallel issue do not count).
"""


if __name__ == "__main__":
    main()
