"""How much of "no loss after pruning" comes from the allocation, how much from a longer fine-tune, and how much from
distillation? One target, one pruned architecture per allocation, fine-tuned by several recipes under several seeds,
beside the controls for what else changes:

- `3 epochs`: the pipeline's fine-tune (the quick recipe);
- `N epochs`: the same recipe run --epochs long, no distillation (the control for distillation);
- `N epochs, distilled`: that, distilling from the base (--distill-weight); also for a uniform allocation at the
  same MACs (the control for the allocation);
- the base itself trained the same N epochs by the fine-tune recipe (the control for "more training": does the
  unpruned model gain as much?);
- with --scratch-seeds, the sensitivity-allocated architecture trained from random weights by the base's own recipe
  for the base's epochs plus N (the control for pruning itself: is the base's knowledge worth keeping?).

    python benchmarks/controls.py --base runs/verify-quick/base/checkpoint.pt \\
        --data-dir ../shared/cifar-10-batches-py --out benchmarks/results/controls_quick --work runs/bench-controls

Every model is scored on the 10,000 test images and on the held-out training images no allocation or method saw
(past the 3,072 sensitivity allocation measures on); differences are paired over images and seeds. Every fine-tune
resumes from --work, and each recipe's cells are kept in <work>/<recipe>.json.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch

from prunedroid.experiment import Bench, arguments, base_title, interval, mean_sd
from prunedroid.measure.bench import paired_difference
from prunedroid.measure.report import markdown_table, write_results
from prunedroid.models import build_model
from prunedroid.pruned import prune_checkpoint
from prunedroid.pruning import Budget
from prunedroid.training.checkpoint import Checkpoint
from prunedroid.training.train import TrainConfig, evaluate, make_config, train


def recipe_bench(args, name: str, epochs: int, distill_weight: str | None) -> Bench:
    """A Bench whose fine-tune is the quick recipe run `epochs` long (distilled when a weight is given); its cells in
    <work>/<name>.json, its checkpoints under <work>/<name>/."""
    folder = f"{args.work}/{name}"
    bench = Bench.open(args.base, folder, folder, args.finetune_preset, args.data_dir, args.threads, distill_weight)
    bench.finetune_config = dataclasses.replace(bench.finetune_config, epochs=epochs)
    bench.payload["finetune"] = dataclasses.asdict(bench.finetune_config)
    return bench


def finetuned(bench: Bench, budget: Budget, seeds: list[int]) -> dict:
    """The cell pruned to `budget` (keyed by its allocation), fine-tuned by the bench's recipe under every seed."""
    bench.measure(budget.allocation, "l1", budget, allocation=budget.allocation, target=budget.target)
    for seed in seeds:
        bench.finetune(budget.allocation, "l1", budget, finetune_seed=seed)
        bench.save("controls (in progress)", "")
    return bench.cells[budget.allocation]


def correct_tables(bench: Bench, key: str) -> dict[str, torch.Tensor]:
    """Per judged split, bool (seeds, N): which images the cell's fine-tune under each seed it has (this run's and
    earlier runs') gets right."""
    return {name: torch.stack([bench.per_image_correct(key, seed, name, split) for seed in bench.finetune_seeds(key)])
            for name, split in bench.judged_splits.items()}


def trained_base(bench: Bench, epochs: int, seeds: list[int]) -> dict[str, torch.Tensor]:
    """The unpruned base trained `epochs` more by the fine-tune recipe (no distillation), per seed: the control for
    more training. bool (seeds, N) correct tables on test and unseen images."""
    config = dataclasses.replace(bench.finetune_config, epochs=epochs, distill_weight=0.0)
    return judged_tables(bench, (train(dataclasses.replace(config, seed=seed), bench.data,
                                       bench.work / f"base-plus-{epochs}-seed{seed}", resume=True, progress=False,
                                       init=bench.base_checkpoint).model() for seed in seeds))


def judged_tables(bench: Bench, models: Iterable[torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Per judged split, bool (models, N): which images each model gets right (models are trained as they are
    drawn, one at a time)."""
    tables: dict[str, list] = {name: [] for name in bench.judged_splits}
    for model in models:
        for name, split in bench.judged_splits.items():
            tables[name].append(evaluate(model, split, per_image=True)["correct"])
    return {name: torch.stack(rows) for name, rows in tables.items()}


def from_scratch(bench: Bench, pruned_arch: dict, epochs: int, seeds: list[int]) -> dict[str, torch.Tensor]:
    """The pruned architecture with fresh random weights drawn from each seed, trained by the base's own recipe for
    `epochs`: the control for pruning itself. bool (seeds, N) correct tables on test and unseen images."""
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    recipe = TrainConfig(**{key: value for key, value in bench.base_checkpoint.recipe.items() if key in fields})

    def trained(seed: int) -> torch.nn.Module:
        config = dataclasses.replace(recipe, epochs=epochs, seed=seed, threads=bench.finetune_config.threads)
        with torch.random.fork_rng():  # the same fresh weights on every call: a rerun resumes the run they started
            torch.manual_seed(seed)
            weights = build_model(pruned_arch).state_dict()
        init = Checkpoint(arch=pruned_arch, state_dict=weights, recipe={}, data={})
        return train(config, bench.data, bench.work / f"scratch-{epochs}-seed{seed}", resume=True, progress=False,
                     init=init).model()

    return judged_tables(bench, (trained(seed) for seed in seeds))


def seed_list(option: str) -> list[int]:
    """"0,1,2" -> [0, 1, 2]; "" -> []."""
    return [int(seed) for seed in option.split(",") if seed]


def main() -> None:
    parser = arguments(__doc__, out="benchmarks/results/controls_quick", work="runs/bench-controls")
    parser.add_argument("--target", type=float, default=0.6, help="share of MACs removed")
    parser.add_argument("--epochs", type=int, default=8, help="the longer fine-tune's epochs")
    parser.add_argument("--seeds", default="0,1,2", help="fine-tune seeds of every pruned cell (a cell reports every "
                                                       "seed it has, from earlier runs too)")
    parser.add_argument("--base-seeds", default="0", help="seeds of the base trained --epochs more")
    parser.add_argument("--round-to", type=int, default=8, help="channel multiple of every pruned cell")
    parser.add_argument("--scratch-seeds", default="", help="seeds of the sensitivity-allocated architecture trained "
                                                            "from scratch (the base's recipe, its epochs + --epochs); "
                                                            "none by default")
    args = parser.parse_args()
    seeds = seed_list(args.seeds)
    budgets = {allocation: Budget.of(mac_reduction=args.target, allocation=allocation, round_to=args.round_to)
               for allocation in ("sensitivity", "uniform")}
    short = recipe_bench(args, "3-epochs", make_config(args.finetune_preset, {}, finetune=True).epochs, None)
    plain = recipe_bench(args, f"{args.epochs}-epochs", args.epochs, None)
    distilled = recipe_bench(args, f"{args.epochs}-epochs-distilled", args.epochs, args.distill_weight or "0.5")
    cells = {("sensitivity", f"{short.finetune_config.epochs} epochs"):
                 (short, finetuned(short, budgets["sensitivity"], seeds)),
             ("sensitivity", f"{args.epochs} epochs"): (plain, finetuned(plain, budgets["sensitivity"], seeds)),
             ("sensitivity", f"{args.epochs} epochs, distilled"):
                 (distilled, finetuned(distilled, budgets["sensitivity"], seeds)),
             ("uniform", f"{args.epochs} epochs, distilled"):
                 (distilled, finetuned(distilled, budgets["uniform"], seeds))}
    more = trained_base(short, args.epochs, seed_list(args.base_seeds))
    rows, tables = [], {}
    for (allocation, recipe), (bench, _) in cells.items():
        tables[allocation, recipe] = correct_tables(bench, allocation)
    tables["base", f"+{args.epochs} epochs"] = more
    results, scratch_gaps = {}, {}
    if args.scratch_seeds:
        pruned = prune_checkpoint(short.base_checkpoint, "l1", budgets["sensitivity"],
                                  **short.cell_pruning_data("sensitivity", "l1"))
        scratch_epochs = short.base_checkpoint.epoch + args.epochs
        scratch = tables["sensitivity", f"from scratch, {scratch_epochs} epochs"] = from_scratch(
            short, pruned.arch, scratch_epochs, seed_list(args.scratch_seeds))
        finetuned_plain = tables["sensitivity", f"{args.epochs} epochs"]
        scratch_gaps = {name: paired_difference(scratch[name], finetuned_plain[name], over_runs=True)
                        for name in scratch}
    for (allocation, recipe), table in tables.items():
        results[f"{allocation} / {recipe}"] = judged = short.against_base(table)
        per_seed, gaps = judged["per_seed"], judged["vs_base"]
        rows.append({"model": allocation if allocation == "base" else f"{allocation}, {args.target:.0%} fewer MACs",
                     "training after the base": recipe, "seeds": len(table["test"]),
                     "test top-1, mean (sd)": mean_sd(per_seed["test"]),
                     "unseen top-1, mean (sd)": mean_sd(per_seed["unseen"]),
                     "minus base, test": interval(gaps["test"]), "minus base, unseen": interval(gaps["unseen"])})
    payload = {"command": short.payload["commands"][-1], "base": short.payload["base"], "target": args.target,
               "round_to": args.round_to, "seeds_asked": seeds,
               "recipes": {name: b.payload["finetune"] for name, b in (("short", short), ("plain", plain),
                                                                      ("distilled", distilled))},
               "cells": {f"{a} / {r}": cell for (a, r), (_, cell) in cells.items()},
               "results": results, "scratch_minus_finetuned": scratch_gaps}
    text = (f"Base: {base_title(payload)}. L1, `--round-to {args.round_to}`. The base scores "
            f"{short.base_top1('test'):.2%} on test images and "
            f"{short.base_top1('unseen'):.2%} on the {len(short.unseen_holdout):,} unseen held-out "
            f"ones.\n\n" + markdown_table(rows, list(rows[0])))
    if scratch_gaps:
        text += (f"\nFrom scratch minus the {args.epochs}-epoch fine-tune (both undistilled, paired over images "
                 f"and seeds): test {interval(scratch_gaps['test'])}, unseen {interval(scratch_gaps['unseen'])}.\n")
    write_results(args.out, payload, title=f"Where the accuracy comes from: allocation, fine-tune length, "
                                           f"distillation ({args.target:.0%} fewer MACs)", table=text, notes=NOTES)


NOTES = """
`minus base`: the model's top-1 minus the unpruned base's on the same images, in points, with a 95% bootstrap
interval over images and seeds. `unseen`: held-out training images past the 3,072 sensitivity allocation measures
on, which no model trained on and nothing chose by. The base trained N more epochs uses the fine-tune recipe (same
learning rate and schedule) without distillation. `from scratch` (with --scratch-seeds): the pruned
architecture with fresh random weights, trained by the base's own recipe (its learning rate, schedule and
augmentation) for the base's epochs plus N, so it sees as many epochs as the pruned-and-fine-tuned models in all.
"""


if __name__ == "__main__":
    main()
