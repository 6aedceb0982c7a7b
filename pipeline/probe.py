"""Model files from outside this process are first opened in a child process: a damaged or crafted file can abort a
native runtime (ExecuTorch's loader calls std::terminate on some malformed programs), and an abort ends the
process however Python code is written. The child loads each file in its runtime and runs it once on zeros; only if
it exits cleanly does the caller load the files itself.

    python -m pipeline.probe <input shape, e.g. 1,3,32,32> <file> [<file> ...]
"""
from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import PipelineError

TIMEOUT_S = 300


def probe(paths: Sequence[Path], input_shape: Sequence[int]) -> None:
    """Raises an error naming the first of `paths` (.ptl, .onnx, .pte) that its runtime cannot load and run on a
    zero input of `input_shape`, whether it raised or crashed the child process."""
    if not paths:
        return
    command = [sys.executable, "-m", "pipeline.probe", ",".join(map(str, input_shape)), *map(str, paths)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
                                cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        raise PipelineError(f"loading {', '.join(map(str, paths))} did not finish in {TIMEOUT_S} s") from None
    passed = [line[3:] for line in result.stdout.splitlines() if line.startswith("ok ")]
    if result.returncode == 0 and len(passed) == len(paths):
        return
    failed = paths[len(passed)] if len(passed) < len(paths) else paths[-1]
    reasons = [line[5:] for line in result.stdout.splitlines() if line.startswith("fail ")]
    if result.returncode < 0:
        why = f"it crashed its runtime ({signal.Signals(-result.returncode).name})"
    else:
        why = reasons[0] if reasons else (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
    raise PipelineError(f"{failed} cannot be run by its runtime: {why[:300]}; the file is damaged or was not written "
                        f"by `invoke export`: export again")


def _run_once(path: Path, zeros) -> None:  # zeros: torch.Tensor
    if path.suffix == ".ptl":
        import torch.jit.mobile

        torch.jit.mobile._load_for_lite_interpreter(str(path))(zeros)
    elif path.suffix == ".onnx":
        import numpy as np
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        session.run(None, {session.get_inputs()[0].name: np.zeros(tuple(zeros.shape), dtype=np.float32)})
    elif path.suffix == ".pte":
        from pipeline import pte

        pte.load_pte(path).execute([zeros])
    else:
        raise ValueError(f"unknown model format {path.suffix!r}")


def main(arguments: list[str]) -> int:
    import torch

    zeros = torch.zeros(*(int(s) for s in arguments[0].split(",")))
    for name in arguments[1:]:
        try:
            _run_once(Path(name), zeros)
        except Exception as err:  # any refusal of the runtime means the same: this file cannot run
            print(f"fail {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}",
                  flush=True)
            return 1
        print(f"ok {name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
