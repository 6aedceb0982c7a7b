"""What training runs reached: recipe, per-epoch history, test top-1 as recorded at the end of training, and the
test top-1 re-measured here on the full 10,000-image test set (a check that the checkpoint loads and agrees, even
when it was trained on another device).

    invoke train --preset quick          # writes runs/quick/checkpoint.pt
    python benchmarks/training_report.py runs/quick/checkpoint.pt --out benchmarks/results/training_quick
"""
from __future__ import annotations

import argparse

from prunedroid import data as cifar
from prunedroid.measure.report import markdown_table, write_results
from prunedroid.pruning.cost import count_cost
from prunedroid.training.checkpoint import Checkpoint
from prunedroid.training.train import NON_RECIPE_OPTIONS, PRESETS, evaluate, make_config


def preset_command(recipe: dict) -> str:
    """The shortest `invoke train` command that reproduces `recipe`: its model's preset plus the options that
    differ."""
    model = recipe.get("model", "vgg16")
    presets = {name: vars(make_config(name, {"model": model})) for name in PRESETS}
    not_compared = {*NON_RECIPE_OPTIONS, "model"}

    def distance(name: str) -> int:
        return sum(recipe.get(k) != v for k, v in presets[name].items() if k not in not_compared)
    preset = min(presets, key=distance)
    extra = [f"--{k.replace('_', '-')} {recipe[k]}" for k, v in presets[preset].items()
             if k not in not_compared and recipe.get(k) != v]
    return " ".join(["invoke train --preset", preset, *([f"--model {model}"] if model != "vgg16" else []), *extra])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", required=True, help="results path without extension")
    args = parser.parse_args()

    test = cifar.load_test(args.data_dir)
    runs = []
    for path in args.checkpoints:
        checkpoint = Checkpoint.load(path)
        model = checkpoint.model()
        recipe, history = checkpoint.recipe, checkpoint.history
        cost = count_cost(model)
        runs.append({
            "checkpoint": str(path), "command": preset_command(recipe), "recipe": recipe,
            "trained_on": checkpoint.device or "?", "versions": checkpoint.versions,
            "epochs": checkpoint.epoch, "train_seconds": round(sum(h["seconds"] for h in history), 1),
            "test_top1_at_training": checkpoint.metrics["test"]["top1"],
            "test_top1_here": evaluate(model, test)["top1"], "macs": cost.macs, "params": cost.params,
            "history": history,
        })
        print({k: v for k, v in runs[-1].items() if k not in ("history", "recipe")}, flush=True)
    rows = [{"command": f"`{r['command']}`", "width": r["recipe"]["width"], "epochs": r["epochs"],
             "trained on": r["trained_on"], "training time (s)": r["train_seconds"],
             "test top-1": f"{100 * r['test_top1_at_training']:.2f}%",
             "test top-1 re-measured here": f"{100 * r['test_top1_here']:.2f}%",
             "MACs": f"{r['macs'] / 1e6:.1f}M", "params": f"{r['params'] / 1e6:.2f}M"} for r in runs]
    write_results(args.out, {"runs": runs}, title="Training runs on real CIFAR-10 (45,000 train / 5,000 holdout)",
                  table=markdown_table(rows, list(rows[0])),
                  notes="training time: sum of the epochs' training loops (holdout and test evaluation excluded). "
                        "Test top-1 is on all 10,000 test images, no test-time augmentation.")


if __name__ == "__main__":
    main()
