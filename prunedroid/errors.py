"""The one exception the pipeline raises for bad input, and the one-line wording of the OS's own refusals."""
import errno
import re
import traceback
from collections.abc import Callable

OPTION = re.compile(r"`([a-z][a-z0-9_]*)`")  # an option named in a message: `mac_reduction`


class PrunedroidError(Exception):
    """A problem the user can fix: the message names it and says how. Options are named by their field, in
    backquotes (`mac_reduction`), as a Python caller passes them; a command line names its own flag for each
    (`worded`)."""

    def worded(self, option_name: Callable[[str], str]) -> str:
        """The message with each option named by option_name(field), e.g. "mac_reduction" -> "--mac-reduction"."""
        return OPTION.sub(lambda match: option_name(match.group(1)), super().__str__())


class ReportedByRankZero(PrunedroidError):
    """A failure every process of a data-parallel run shares, which process 0 reports: the others exit without
    repeating it."""


# What to do about the OS errors a user meets when writing results: the message says which path and what to do, with
# {out} the option that names where the task writes.
_FIXES = {
    errno.ENOSPC: "the disk is full: free space or write to another disk ({out})",
    errno.EDQUOT: "the disk quota is used up: free space or write elsewhere ({out})",
    errno.EACCES: "permission denied: choose a folder you can write ({out}) or fix its permissions",
    errno.EPERM: "permission denied: choose a folder you can write ({out}) or fix its permissions",
    errno.EROFS: "the file system is read-only: choose a writable folder ({out})",
    errno.EEXIST: "a file stands where a folder is needed: choose another {out} or move the file",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another {out} or move the file",
    errno.EISDIR: "a folder stands where a file is needed: choose another path",
    errno.ENAMETOOLONG: "the path is too long: choose a shorter {out}",
}


def os_error_message(err: OSError, out: str = "--out") -> str:
    """One line for an OSError: the path it concerns, what went wrong and, for the common cases, the fix, naming
    `out`, the option that says where the task writes."""
    reason = err.strerror or str(err) or type(err).__name__
    where = f"{err.filename}: " if err.filename else ""
    return f"{where}{_FIXES[err.errno].format(out=out)} ({reason})" if err.errno in _FIXES else f"{where}{reason}"


def unexpected_error_message(err: BaseException) -> str:
    """One line for an exception no check anticipated: what it was, where it was raised, and what to do."""
    frames = traceback.extract_tb(err.__traceback__)
    where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    text = " ".join(str(err).split())[:300] or "no message"
    return (f"error: unexpected {type(err).__name__}{where}: {text}. If a file you passed is damaged, export or train "
            f"it again; otherwise this is a prunedroid defect: rerun with PRUNEDROID_TRACEBACK=1 and report it")
