"""The goal: the largest MAC reduction whose fine-tuned top-1, averaged over fine-tune seeds, stays within 0.5 point of
the unpruned base - and which recipe gets furthest. Every cell is L1 with sensitivity allocation, fine-tuned
--epochs in all, distilled from the base; one-shot (`1 step`) prunes to the target at once, `k steps` prunes in k
steps that each remove the same share of the MACs left, with a fine-tune of --epochs/k between (iterative pruning).
--epochs can list several lengths (a longer fine-tune is the control for more steps: both add training).

    python benchmarks/goal.py --base runs/wide3/checkpoint.pt --data-dir ../shared/cifar-10-batches-py \\
        --out benchmarks/results/goal_wide --work runs/bench-goal-wide --targets 0.65,0.7 --steps 1,2 --epochs 8

Each step's sensitivity curves are measured on the model that step prunes (the base, then the previous step's
fine-tuned model) on the base's held-out training images, and cached per model under --work. Every model is scored
on the 10,000 test images and on the held-out images nothing trained on or chose by; the verdict reads the test
column's mean over seeds, as the goal is stated, with its interval over images and seeds. Every fine-tune resumes
from --work; finished cells are kept in <out>.json.
"""
from __future__ import annotations

import dataclasses
import statistics

import torch

from prunedroid.experiment import Bench, arguments, base_title, interval, mean_sd
from prunedroid.files import file_sha256
from prunedroid.measure.report import markdown_table
from prunedroid.pruned import prune_checkpoint
from prunedroid.pruning import Budget, count_cost
from prunedroid.training.checkpoint import Checkpoint
from prunedroid.training.train import CHECKPOINT_NAME, evaluate, train

WITHIN = 0.005  # the goal's tolerance: top-1 (fraction) below the base's


def step_reduction(target: float, steps: int, step: int, original_macs: int, macs: int) -> float:
    """The share of `macs` (the model step `step` of `steps` prunes, 1-based) to remove so that after it the chain
    has removed 1 - (1 - target)^(step/steps) of `original_macs`: every step removes the same share of what is left,
    whatever the earlier steps' budgets actually reached."""
    return 1 - (1 - target) ** (step / steps) * original_macs / macs


def key_of(target: float, steps: int, epochs: int) -> str:
    return f"{target:.2f}/{steps}-step/{epochs}-epochs"


def pruned_in_steps(bench: Bench, target: float, steps: int, epochs: int, seed: int, round_to: int) -> Checkpoint:
    """The base pruned to `target` in `steps` steps, each followed by a fine-tune of epochs/steps under `seed`
    (bench.finetune_config otherwise: distilled from the base when it has a distill_weight); returns the last
    step's fine-tuned checkpoint. Each step's fine-tune lives under
    <work>/<target>-<steps>-step-<epochs>-epochs-seed<seed>/step<k> and resumes there."""
    if epochs % steps:
        raise ValueError(f"{epochs} epochs do not split into {steps} equal fine-tunes")
    config = dataclasses.replace(bench.finetune_config, epochs=epochs // steps, seed=seed)
    folder = bench.work / f"{key_of(target, steps, epochs).replace('/', '-')}-seed{seed}"
    model, model_path = bench.base_checkpoint, bench.base_path
    original_macs = count_cost(bench.base).macs
    for step in range(1, steps + 1):
        reduction = step_reduction(target, steps, step, original_macs, count_cost(model.model()).macs)
        budget = Budget.of(mac_reduction=reduction, allocation="sensitivity", round_to=round_to)
        data = {**bench.pruning_data("l1"),
                "sensitivity_cache": bench.work / f"sensitivity-{file_sha256(model_path)[:12]}.json"}
        pruned = prune_checkpoint(model, "l1", budget, **data)
        model_path = folder / f"step{step}" / CHECKPOINT_NAME
        model = train(config, bench.data, model_path.parent, resume=True, progress=False, init=pruned,
                      teacher=bench.base_path if config.distill_weight else None)
    return model


def measure_cell(bench: Bench, target: float, steps: int, epochs: int, seeds: list[int], round_to: int) -> dict:
    """The cell's models under every seed: MACs removed from the base (mean over seeds: after the first step each
    seed's model is allocated on its own curves), channels, per-seed top-1 on test and unseen
    held-out images and the top-1 minus the base's on the same images (Bench.against_base)."""
    tables: dict[str, list[torch.Tensor]] = {name: [] for name in bench.judged_splits}
    channels, reductions = [], []
    for seed in seeds:
        checkpoint = pruned_in_steps(bench, target, steps, epochs, seed, round_to)
        record = checkpoint.pruning or {}
        channels.append([row["channels_after"] for row in record["layers"]])
        reductions.append(record.get("mac_reduction_from_original", record["mac_reduction"]))
        model = checkpoint.model()
        for name, split in bench.judged_splits.items():
            tables[name].append(evaluate(model, split, per_image=True)["correct"])
    judged = bench.against_base({name: torch.stack(rows) for name, rows in tables.items()})
    return {"target": target, "steps": steps, "epochs": epochs, "seeds": seeds, "channels": channels,
            "mac_reduction": statistics.mean(reductions), **judged}


def within(cell: dict) -> bool:
    """Whether the cell's mean test top-1 over its seeds is within WITHIN of the base's."""
    return cell["vs_base"]["test"]["difference"] >= -WITHIN


def verdict(cells: dict[str, dict]) -> str:
    """The largest target any cell reaches within the tolerance (the best such cell there, with its gap), or the
    closest miss."""
    passing = [cell for cell in cells.values() if within(cell)]
    if not passing:
        best = max(cells.values(), key=lambda cell: cell["vs_base"]["test"]["difference"])
        return (f"No cell stays within {100 * WITHIN:.1f} point of the base; the closest is {recipe(best)} at "
                f"{best['mac_reduction']:.1%} fewer MACs, {interval(best['vs_base']['test'])} on test images.")
    # By target, then gap: two recipes at one target differ in the MACs they reach by a rounding, not a result.
    best = max(passing, key=lambda cell: (cell["target"], cell["vs_base"]["test"]["difference"]))
    return (f"The largest reduction within {100 * WITHIN:.1f} point of the base (mean over {len(best['seeds'])} "
            f"seeds, test images): **{best['mac_reduction']:.1%} fewer MACs**, {recipe(best)}, "
            f"{interval(best['vs_base']['test'])} (unseen held-out images: {interval(best['vs_base']['unseen'])}).")


def recipe(cell: dict) -> str:
    steps = "one-shot" if cell["steps"] == 1 else f"{cell['steps']} steps"
    return f"{steps}, {cell['epochs']} epochs"


def main() -> None:
    parser = arguments(__doc__, out="benchmarks/results/goal_wide", work="runs/bench-goal-wide")
    parser.add_argument("--targets", default="0.65,0.7", help="MAC reductions from the base")
    parser.add_argument("--steps", default="1,2", help="pruning steps to reach each target (1: one-shot)")
    parser.add_argument("--epochs", default="8", help="fine-tune epochs in all, split evenly between the steps")
    parser.add_argument("--seeds", default="0,1,2", help="fine-tune seeds of every cell")
    parser.add_argument("--round-to", type=int, default=1, help="channel multiple of every step")
    args = parser.parse_args()
    steps_asked, epochs_asked = ([int(n) for n in option.split(",")] for option in (args.steps, args.epochs))
    if any(epochs % steps for epochs in epochs_asked for steps in steps_asked):
        parser.error(f"every --epochs ({args.epochs}) must split evenly into every --steps ({args.steps})")
    bench = Bench.open(args.base, args.out, args.work, args.finetune_preset, args.data_dir, args.threads,
                       args.distill_weight or "0.5")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    rows = []
    for target in (float(t) for t in args.targets.split(",")):
        for epochs in epochs_asked:
            for steps in steps_asked:
                key = key_of(target, steps, epochs)
                if bench.cells.get(key, {}).get("seeds") != seeds:
                    bench.cells[key] = measure_cell(bench, target, steps, epochs, seeds, args.round_to)
                    bench.save("goal (in progress)", "")
    for cell in bench.cells.values():
        rows.append({"MACs removed": f"{cell['mac_reduction']:.1%}", "recipe": recipe(cell),
                     "seeds": len(cell["seeds"]),
                     "test top-1, mean (sd)": mean_sd(cell["per_seed"]["test"]),
                     "unseen top-1, mean (sd)": mean_sd(cell["per_seed"]["unseen"]),
                     "minus base, test": interval(cell["vs_base"]["test"]),
                     "minus base, unseen": interval(cell["vs_base"]["unseen"]),
                     "within 0.5": "yes" if within(cell) else "no",
                     "channels (seed 0)": "/".join(map(str, cell["channels"][0]))})
    weight = bench.finetune_config.distill_weight
    distilled = f"fine-tunes distilled from the base (weight {weight})" if weight else "fine-tunes not distilled"
    text = (f"Base: {base_title(bench.payload)}; it scores {bench.base_top1('unseen'):.2%} on the "
            f"{len(bench.unseen_holdout):,} unseen held-out images. L1, sensitivity allocation, "
            f"`--round-to {args.round_to}`, {distilled}.\n\n" + markdown_table(rows, list(rows[0]))
            + f"\n{verdict(bench.cells)}\n")
    bench.save(f"The goal: the largest MAC reduction within {100 * WITHIN:.1f} point of the base", text, NOTES)


NOTES = """
`minus base`: the cell's top-1 minus the unpruned base's on the same images, in points, with a 95% bootstrap interval
over images and seeds. `unseen`: held-out training images past the 3,072 that sensitivity allocation measures on,
which no model trained on and nothing chose by. `within 0.5`: the mean over seeds on the test images is at most 0.5
point below the base (what the goal states; it describes the cells, it chooses nothing that is measured next).
`channels`: the last step's kept channels per conv layer under seed 0 (later steps' allocations depend on the seed's
fine-tuned model).
"""


if __name__ == "__main__":
    main()
