"""Command-line strings onto option dataclasses: one parser, so every task reports a bad value the same way."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from prunedroid.errors import PrunedroidError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Options = TypeVar("Options", bound="DataclassInstance")

MAX_SEED = 2**32 - 1  # scikit-learn's and numpy's legacy seeds are 32-bit; torch's generators take these too
# torch starts this many threads when asked to, and 100,000 ended in a segmentation fault: more threads than any
# machine here has cores is a typo, not a setting.
MAX_THREADS = 256


def check_seed(seed: object, option: str = "seed") -> int:
    """`seed` if it is a whole number every random generator here takes (0..MAX_SEED); else an error naming
    `option`."""
    if type(seed) is not int or not 0 <= seed <= MAX_SEED:
        raise PrunedroidError(f"`{option}` must be a whole number in 0..{MAX_SEED}, got {seed!r}")
    return seed


def is_finite_number(value: object) -> bool:
    """A JSON number that is finite: int or float (not bool), with ints past float's range refused too."""
    if type(value) not in (int, float):
        return False
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except OverflowError:  # an int of hundreds of digits, as a hostile file may hold
        return False


def parse_option(value: str, annotation: str, name: str) -> str | int | float | bool | None:
    """`value` as the field's type (annotation as written: "int", "float | None", "bool", "str")."""
    kind = annotation.replace(" | None", "")
    if value.lower() in ("none", "") and "None" in annotation:
        return None
    try:
        if kind == "bool":
            lowered = value.lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return lowered in ("1", "true", "yes")
        parsed = {"int": int, "float": float, "str": str}[kind](value)
        if kind == "float" and not math.isfinite(parsed):  # nan passes no range check written as `not a < x`
            raise ValueError
        return parsed
    except ValueError:
        wanted = "a finite number" if kind == "float" else annotation
        raise PrunedroidError(f"option `{name}` expects {wanted}, got {value!r}") from None


def with_options(base: Options, overrides: Mapping[str, object] | None, what: str) -> Options:
    """`base` (a dataclass) with each override that is not None parsed and applied; the dataclass validates."""
    # Annotations as written ("float | None"); a class defined without `from __future__ import annotations` has types.
    hints = {f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
             for f in dataclasses.fields(base)}
    changes: dict[str, Any] = {}
    for name, value in (overrides or {}).items():
        if name not in hints:
            raise PrunedroidError(f"unknown {what} option {name!r}; known: {', '.join(hints)}")
        if value is not None:
            changes[name] = parse_option(str(value), hints[name], name)
    return dataclasses.replace(base, **changes)


def check(checks: list[tuple[bool, str]], what: str) -> None:
    """Raises one error listing the message of every (ok, message) that is not ok."""
    problems = [message for ok, message in checks if not ok]
    if problems:
        raise PrunedroidError(f"bad {what} options: " + "; ".join(problems))


def option(default: Any, help: str) -> Any:
    """A dataclass field that is a user-facing option: its default, and its help without the default (generated)."""
    return dataclasses.field(default=default, metadata={"help": help})


def described(field: dataclasses.Field) -> str:
    """An option's help with its default, e.g. "nearest neighbours per channel (default 3)"."""
    default = field.default
    shown = "" if default is None or default is dataclasses.MISSING else (
        f" (default {'yes' if default else 'no'})" if isinstance(default, bool) else f" (default {default})")
    return field.metadata["help"] + shown


def option_fields(options: type) -> list[dataclasses.Field]:
    """The fields of an options dataclass that are user-facing options (declared with `option`)."""
    return [field for field in dataclasses.fields(options) if "help" in field.metadata]
