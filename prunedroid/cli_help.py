"""The command line's generated options: every option a task takes from a dataclass (TrainConfig's recipe, Budget's
amounts and settings, each registered pruning method's fields, LatencyOptions), named and helped as its field says.

Generating them imports those dataclasses' modules, and so torch (3-6 s on 2 cores), which `invoke --list` and
`invoke <task> --help` have no use for. So the generated text is kept in cli_help.json together with the SHA-256 of
every prunedroid source file the generation read, and used while all of them are unchanged; otherwise it is
generated again, here and now (slower, never stale). `python -m prunedroid.cli_help` rewrites the file; a test fails
while the committed one is stale. This module imports no torch.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from prunedroid.errors import OPTION

PACKAGE = Path(__file__).resolve().parent
STORED = PACKAGE / "cli_help.json"


def flag(option: str) -> str:
    """The command line's flag for an option field: mac_reduction -> --mac-reduction."""
    return "--" + option.replace("_", "-")


def flagged(text: str) -> str:
    """Help or an error message with each `field` the library names as this command line's flag."""
    return OPTION.sub(lambda match: flag(match.group(1)), text)


def recipe_help() -> dict[str, str]:
    """TrainConfig's options; their defaults are the preset's, so the help states none."""
    from prunedroid.options import option_fields
    from prunedroid.training.train import TrainConfig

    return {field.name: field.metadata["help"] for field in option_fields(TrainConfig)}


def budget_help() -> dict[str, str]:
    """The budget's options: its amounts (exact per-group channel counts come from an allocation, not a flag) and
    its settings."""
    from prunedroid.options import described, option_fields
    from prunedroid.pruning.budget import AMOUNTS, Budget, LayerChannels
    from prunedroid.request import RECOMMENDED

    amounts = {cls.option: cls.help for cls in AMOUNTS if cls is not LayerChannels}
    settings = {field.name: f"{field.metadata['help']} (default {RECOMMENDED[field.name]} with a `mac_reduction`, "
                            f"the recipe measured best for a phone; else {field.default})"
                if field.name in RECOMMENDED else described(field) for field in option_fields(Budget)}
    return {name: flagged(text) for name, text in {**amounts, **settings}.items()}


def method_help() -> tuple[str, dict[str, str]]:
    """--method's help, and every registered method's options (an option several methods share lists each one's)."""
    from prunedroid.options import described, option_fields
    from prunedroid.pruning import BUDGET_OPTIONS, REGISTRY

    options: dict[str, list[str]] = {}
    for name, method in REGISTRY.items():
        for field in option_fields(method):
            if field.name not in BUDGET_OPTIONS:
                options.setdefault(field.name, []).append(f"{name}: {flagged(described(field))}")
    methods = "; ".join(f"{name}: {REGISTRY[name].summary}" for name in sorted(REGISTRY))
    return methods, {option: "; ".join(helps) for option, helps in options.items()}


def latency_help() -> dict[str, str]:
    from prunedroid.measure.latency import LatencyOptions
    from prunedroid.options import described, option_fields

    return {field.name: flagged(described(field)) for field in option_fields(LatencyOptions)}


def int8_help() -> dict[str, str]:
    from prunedroid.deploy.export import Int8Options
    from prunedroid.options import described, option_fields

    return {field.name: flagged(described(field)) for field in option_fields(Int8Options)}


def _source_hashes(paths: list[str]) -> dict[str, str]:
    """package-relative path -> SHA-256 of that source file ("" where it is gone)."""
    return {path: hashlib.sha256((PACKAGE / path).read_bytes()).hexdigest() if (PACKAGE / path).is_file() else ""
            for path in paths}


def generate() -> dict:
    """{"recipe", "budget", "method", "method_options", "latency", "int8"}: the generated help (option -> text;
    "method": the list of methods), and "sources": the hash of every prunedroid module the generation imported."""
    methods, method_options = method_help()
    help_text = {"recipe": recipe_help(), "budget": budget_help(), "method": methods, "method_options": method_options,
                 "latency": latency_help(), "int8": int8_help()}
    files = [module.__file__ for name, module in sys.modules.items()
             if name == "prunedroid" or name.startswith("prunedroid.")]
    read = sorted(str(Path(file).resolve().relative_to(PACKAGE)) for file in files if file)
    return {**help_text, "sources": _source_hashes(read)}


def stored() -> dict | None:
    """The stored help if every source it was generated from is unchanged, else None."""
    try:
        kept = json.loads(STORED.read_text())
        return kept if _source_hashes(list(kept["sources"])) == kept["sources"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def option_help() -> dict:
    """The generated help: the stored one while fresh, else generated now."""
    return stored() or generate()


def main() -> int:
    from prunedroid.files import atomic_path

    with atomic_path(STORED) as tmp:
        tmp.write_text(json.dumps(generate(), indent=1) + "\n")  # declaration order: the order --help lists them
    print(f"{STORED}: written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
