"""Data-parallel training: two CPU processes under torchrun (gloo) train as one process does with the same global
batch, and batch norm's statistics are the global batch's."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import run_invoke
from torch import nn

from prunedroid.errors import PrunedroidError
from prunedroid.training.checkpoint import Checkpoint
from prunedroid.training.distributed import World, with_global_batchnorm
from prunedroid.training.train import CHECKPOINT_NAME

# One optimiser step of the same global batch in one process and in two differs only in the order floats are summed
# (per-half sums then all-reduced, in batch norm and in the gradients): about 3e-6 here. SGD amplifies such rounding
# differences step by step on this noise data (after 8 steps 0.017, as much as one process run once with 1 and once
# with 2 threads differs from itself), so the match is checked after one step, where a wrong computation - local
# batch statistics, a gradient summed instead of averaged, a shard seen twice - is off by 1e-3 or more.
STEP_TOLERANCE = 2e-5


def _global_batchnorm_worker(rank: int, store: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.manual_seed(0)
    for plain, shape in ((nn.BatchNorm2d(3), (8, 3, 5, 5)), (nn.BatchNorm1d(4, momentum=None), (8, 4))):
        images = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 3 + 1
        weights = torch.randn(shape, generator=torch.Generator().manual_seed(2))
        reference = plain.train()
        expected = reference(images.requires_grad_())
        (expected * weights).sum().backward()

        synced = with_global_batchnorm(nn.Sequential(type(plain)(shape[1], momentum=plain.momentum)))[0].train()
        half = images.detach().chunk(2)[rank].requires_grad_()
        output = synced(half)
        (output * weights.chunk(2)[rank]).sum().backward()
        gradients = torch.stack([synced.weight.grad, synced.bias.grad])
        dist.all_reduce(gradients)  # the global loss is the sum of the two halves'
        results[(rank, type(plain).__name__)] = {
            "output": (output - expected.chunk(2)[rank]).abs().max().item(),
            "input_grad": (half.grad - images.grad.chunk(2)[rank]).abs().max().item(),
            "param_grad": (gradients - torch.stack([reference.weight.grad, reference.bias.grad])).abs().max().item(),
            "running": max((synced.running_mean - reference.running_mean).abs().max().item(),
                           (synced.running_var - reference.running_var).abs().max().item()),
        }
    dist.destroy_process_group()


def test_global_batchnorm_normalises_with_the_whole_batch_and_backpropagates_through_it(tmp_path):
    """Two processes, each with half a batch: outputs, gradients (input, weight, bias) and running statistics equal
    one BatchNorm's on the whole batch, for 2-d and 1-d batch norm and the cumulative average (momentum None)."""
    results = mp.Manager().dict()
    mp.spawn(_global_batchnorm_worker, args=(str(tmp_path / "store"), results), nprocs=2)
    assert len(results) == 4
    for where, differences in results.items():
        assert max(differences.values()) < 1e-5, (where, differences)


def _train(out: Path, cifar_dir: Path, *extra: str, batch: int = 64):
    """One optimiser step (one epoch of one batch) of the smoke recipe."""
    return run_invoke("train", "--preset", "smoke", "--epochs", "1", "--train-limit", str(batch),
                      "--batch-size", str(batch),
                      "--warmup-epochs", "0", "--threads", "1", "--out", str(out), "--data-dir", str(cifar_dir),
                      *extra)


def test_two_processes_train_as_one_with_the_same_global_batch(cifar_dir, tmp_path):
    one, two = _train(tmp_path / "one", cifar_dir), _train(tmp_path / "two", cifar_dir, "--nproc", "2")
    assert one.returncode == two.returncode == 0, two.stderr
    assert two.stdout.count("epoch 1/1:") == 1 and two.stdout.count("test top-1") == 1  # process 0 reports
    alone, together = (Checkpoint.load(tmp_path / run / CHECKPOINT_NAME) for run in ("one", "two"))
    assert together.device == "2 processes, cpu each" and alone.device == "cpu"
    assert {**together.recipe, "nproc": 1} == alone.recipe and together.recipe["nproc"] == 2
    for name, tensor in alone.state_dict.items():
        assert torch.allclose(tensor.double(), together.state_dict[name].double(), rtol=0, atol=STEP_TOLERANCE), name
    assert together.history[0]["train_loss"] == pytest.approx(alone.history[0]["train_loss"], abs=STEP_TOLERANCE)
    assert together.history[0]["train_top1"] == alone.history[0]["train_top1"]
    assert together.metrics["test"]["images"] == alone.metrics["test"]["images"] == 500

    # --nproc decides where a run goes, not what it trains: one process resumes the two-process run.
    resumed = _train(tmp_path / "two", cifar_dir, "--resume")
    assert resumed.returncode == 0 and "after epoch 1/1" in resumed.stdout


def test_a_failure_every_process_meets_is_said_once(cifar_dir, tmp_path):
    uneven = _train(tmp_path / "uneven", cifar_dir, "--nproc", "2", batch=63)
    assert uneven.returncode == 2
    assert uneven.stderr.strip().splitlines() == [
        "error: --batch-size 63 does not split evenly over 2 processes: pass a multiple of 2"]
    assert not (tmp_path / "uneven" / CHECKPOINT_NAME).exists()

    none = _train(tmp_path / "none", cifar_dir, "--nproc", "0")
    assert none.returncode == 2 and none.stderr.strip().splitlines() == [
        "error: bad training options: nproc must be >= 1"]

    swarm = _train(tmp_path / "swarm", cifar_dir, "--nproc", "100000")  # refused before any process starts
    assert swarm.returncode == 2 and len(swarm.stderr.strip().splitlines()) == 1
    assert swarm.stderr.startswith("error: --nproc 100000 is more processes than this machine has CPU cores")
    assert not (tmp_path / "swarm").exists()


def test_the_world_is_read_from_torchruns_environment():
    assert World.from_environment({}) == World(0, 1, 0, 1)
    world = World.from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (world.distributed, world.leads) == (True, False)
    assert world.device(torch.device("cuda")) == torch.device("cuda", 1)
    assert world.device(torch.device("cpu")) == torch.device("cpu")
    assert torch.equal(world.shard(torch.arange(8)), torch.tensor([6, 7]))
    with pytest.raises(PrunedroidError, match="pass `device` cuda"):
        world.device(torch.device("cuda", 0))
    with pytest.raises(PrunedroidError, match="whole numbers"):
        World.from_environment({"WORLD_SIZE": "two"})
