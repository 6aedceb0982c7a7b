"""Which convolutions torch's oneDNN trains wrongly on this CPU: each shape's forward and backward is run `--steps`
times in a fresh process (a crash there cannot take this one down), in channels-last and in NCHW, with oneDNN on
and off, on 1 and 2 threads; the exit is recorded (0, a signal, or a hang past --seconds). What
prunedroid.training.train.onednn_fails_on_conv predicts for the shape is beside it.

    python benchmarks/onednn_defect.py --out benchmarks/results/onednn_defect --tries 3
"""
from __future__ import annotations

import argparse
import itertools
import os
import signal
import subprocess
import sys

import torch
from torch import nn

from prunedroid.measure.report import markdown_table, write_results
from prunedroid.training.train import onednn_fails_on_conv

# (input channels, output channels, kernel, stride, input height and width)
SHAPES = [(1, 2, 1, 2, 32), (2, 4, 1, 2, 16), (4, 8, 1, 2, 16), (6, 12, 1, 2, 16), (8, 16, 1, 2, 16),
          (4, 8, 1, 1, 16), (2, 4, 3, 2, 16)]
CHILD = """
import sys, torch
cin, cout, kernel, stride, size, steps, channels_last, onednn = map(int, sys.argv[1:9])
torch.backends.mkldnn.enabled = bool(onednn)
layout = torch.channels_last if channels_last else torch.contiguous_format
conv = torch.nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False).to(memory_format=layout)
for _ in range(steps):
    conv(torch.randn(64, cin, size, size).contiguous(memory_format=layout)).sum().backward()
"""


def outcome(shape: tuple[int, ...], steps: int, channels_last: bool, onednn: bool, threads: int,
            seconds: float) -> str:
    """"ok", the signal that ended the process ("SIGABRT", "SIGSEGV", ...), "hang" or "exit N"."""
    try:
        code = subprocess.run([sys.executable, "-c", CHILD, *map(str, shape), str(steps), str(int(channels_last)),
                               str(int(onednn))], env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                              capture_output=True, timeout=seconds, check=False).returncode
    except subprocess.TimeoutExpired:
        return "hang"
    if code == 0:
        return "ok"
    return signal.Signals(-code).name if code < 0 else f"exit {code}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/onednn_defect")
    parser.add_argument("--tries", type=int, default=3, help="processes per cell")
    parser.add_argument("--steps", type=int, default=100, help="forward and backward passes per process")
    parser.add_argument("--seconds", type=float, default=20, help="a process still running after this has hung")
    args = parser.parse_args()
    rows = []
    for shape, (channels_last, onednn, threads) in itertools.product(
            SHAPES, [(True, True, 1), (True, True, 2), (False, True, 1), (True, False, 1)]):
        results = [outcome(shape, args.steps, channels_last, onednn, threads, args.seconds) for _ in range(args.tries)]
        rows.append({"conv (in, out, kernel, stride, size)": str(shape),
                     "layout": "channels-last" if channels_last else "NCHW", "oneDNN": "on" if onednn else "off",
                     "threads": threads, "failed": f"{sum(r != 'ok' for r in results)}/{args.tries}",
                     "outcomes": " ".join(results), "onednn_fails_on predicts": "yes" if onednn_fails_on_conv(
                         nn.Conv2d(*shape[:3], stride=shape[3])) else "no"})
        print(rows[-1], flush=True)
    table = markdown_table(rows, list(rows[0]))
    write_results(args.out, {"rows": rows, "torch": torch.__version__, "steps": args.steps, "tries": args.tries,
                             "seconds": args.seconds, "onednn_isa": torch.backends.cpu.get_cpu_capability()},
                  title="oneDNN's convolution gradients on this CPU",
                  table=table, notes=f"torch {torch.__version__}, CPU capability "
                                     f"{torch.backends.cpu.get_cpu_capability()}; batch 64, {args.steps} steps a "
                                     f"process. `onednn_fails_on predicts`: the model is trained with oneDNN off.")
    print(table)


if __name__ == "__main__":
    main()
