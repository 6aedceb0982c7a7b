"""Runs several `invoke` command lines in this one interpreter, as tests/conftest.py's run_invoke_each asks: each
through the `invoke` command's own Program, in its own working directory and environment, with its exit code,
stdout and stderr captured (an uncaught exception as the interpreter would print it, exit 1). Reads the calls as JSON
from argv[1] and writes the answers as JSON to argv[2]."""
import contextlib
import io
import json
import os
import sys
import traceback
from pathlib import Path

from invoke.main import program

calls = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
answers = []
for call in calls:
    environment = dict(os.environ)
    os.environ.update(call["env"])
    os.chdir(call["cwd"])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            program.run(["invoke", "--search-root", call["root"], *call["args"]])
            code = 0
        except SystemExit as stop:  # as the interpreter ends on it: an exit code, or a message and exit 1
            if stop.code is None or isinstance(stop.code, int):
                code = stop.code or 0
            else:
                print(stop.code, file=sys.stderr)
                code = 1
        except BaseException:  # what a fresh interpreter would print and exit with
            traceback.print_exc()
            code = 1
    os.environ.clear()
    os.environ.update(environment)
    answers.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
Path(sys.argv[2]).write_text(json.dumps(answers), encoding="utf-8")
