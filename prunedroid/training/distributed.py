"""Data-parallel training under torchrun: which process this is, one batch-norm over the global batch, and the
launcher `--nproc` uses.

A run of N processes computes what one process computes with the same global batch (`batch_size`): each process
takes an equal slice of every batch, DistributedDataParallel averages the gradients, and batch-norm statistics are
those of the whole batch (GlobalBatchNorm), so the recipe - and a resume - does not depend on N.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from prunedroid.errors import PrunedroidError, ReportedByRankZero

Result = TypeVar("Result")


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place in the run: rank among `size` processes, local_rank and local_size on its machine.
    A plain run is World(0, 1, 0, 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> World:
        """The world torchrun describes in RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; a plain run without."""
        env = os.environ if environ is None else environ
        try:
            return cls(*(int(env.get(name, default)) for name, default in (
                ("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "1"))))
        except ValueError:
            raise PrunedroidError("RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be whole numbers (torchrun "
                                  "sets them); unset them to train in one process") from None

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def leads(self) -> bool:
        """Process 0: the one that prints, evaluates and writes files."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device this process trains on: with several processes on CUDA each takes cuda:<local rank>."""
        if self.distributed and device.type == "cuda":
            if device.index is not None:
                raise PrunedroidError(f"device {str(device)!r} names one GPU, but each of the {self.local_size} "
                                      f"processes on a machine takes its own: pass `device` cuda")
            return torch.device("cuda", self.local_rank)
        return device

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's equal slice of a global batch (B, ...) -> (B / size, ...)."""
        return batch.chunk(self.size)[self.rank] if self.distributed else batch

    def agree(self, step: Callable[[], Result]) -> Result:
        """Runs `step` in every process; if it raises PrunedroidError in any, every process raises: process 0 with
        the message (the first failing process's, named when it is not 0), the others ReportedByRankZero."""
        if not self.distributed:
            return step()
        try:
            result, problem = step(), None
        except PrunedroidError as err:
            result, problem = None, str(err)
        problems: list[str | None] = [None] * self.size
        dist.all_gather_object(problems, problem)
        failed = [(rank, message) for rank, message in enumerate(problems) if message is not None]
        if failed:
            rank, message = failed[0]
            if self.leads:
                raise PrunedroidError(message if rank == 0 else f"process {rank}: {message}")
            raise ReportedByRankZero(message)
        return result  # type: ignore[return-value]

    def led(self, step: Callable[[], object]) -> None:
        """`step()` run by process 0 only (a file written, a folder locked); its failure is every process's."""
        self.agree(step if self.leads else lambda: None)

    def from_leader(self, compute: Callable[[], Result]) -> Result:
        """`compute()` run by process 0 only (an evaluation, a file read) and its result handed to every process."""
        if not self.distributed:
            return compute()
        shared = [compute() if self.leads else None]
        dist.broadcast_object_list(shared, src=0)
        return shared[0]  # type: ignore[return-value]

    def total(self, values: torch.Tensor) -> torch.Tensor:
        """`values` summed over the processes (every process gets the sum)."""
        return _all_summed(values) if self.distributed else values



@contextmanager
def joined(world: World) -> Iterator[None]:
    """The run's process group while the block runs (gloo for CPU tensors, NCCL for CUDA ones, each process on the
    GPU of its local rank); nothing for one process."""
    if not world.distributed:
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank % torch.cuda.device_count())
    dist.init_process_group()
    try:
        yield
    finally:
        dist.destroy_process_group()


def _all_summed(values: torch.Tensor) -> torch.Tensor:
    """A copy of `values` summed over every process."""
    summed = values.clone()
    dist.all_reduce(summed)
    return summed


class _SumOverProcesses(torch.autograd.Function):
    """x summed over every process; in backward the gradient is summed likewise, since each process's loss depends
    on every process's x through the sum."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, values: torch.Tensor) -> torch.Tensor:
        return _all_summed(values)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        return _all_summed(grad)


def summed_over_processes(values: torch.Tensor) -> torch.Tensor:
    return _SumOverProcesses.apply(values)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch, summed over every process of the run
    (torch's SyncBatchNorm does this on GPUs only; this works with gloo on the CPU as well). Two all-reduces per
    forward (sum, then squared deviations: the two-pass variance) and their two in backward; C + 1 and C floats.
    In eval mode, or in a single process, it is the BatchNorm it replaced. Same parameters, buffers and state dict."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        local_count = input.new_tensor([input.numel() / input.shape[1]])
        totals = summed_over_processes(torch.cat([input.sum(dims), local_count]))
        count = totals[-1]
        mean = totals[:-1] / count
        centred = input - mean.view(shape)
        variance = summed_over_processes(centred.square().sum(dims)) / count
        output = centred * torch.rsqrt(variance + self.eps).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), variance.detach() * count / (count - 1))
        return output

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_variance: torch.Tensor) -> None:
        """As BatchNorm does in training: an exponential average at `momentum`, or a plain one when it is None."""
        running_mean, running_var, batches = self.running_mean, self.running_var, self.num_batches_tracked
        assert running_mean is not None and running_var is not None and batches is not None, "tracked statistics"
        batches.add_(1)
        factor = 1.0 / batches.item() if self.momentum is None else self.momentum
        running_mean.lerp_(mean, factor)
        running_var.lerp_(unbiased_variance, factor)


def with_global_batchnorm(model: nn.Module) -> nn.Module:
    """`model` with every BatchNorm module replaced, in place, by a GlobalBatchNorm holding the same parameters and
    buffers (the state dict is unchanged)."""
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            synced = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
            synced.weight, synced.bias = child.weight, child.bias
            synced.running_mean, synced.running_var = child.running_mean, child.running_var
            synced.num_batches_tracked = child.num_batches_tracked
            synced.train(child.training)
            setattr(model, name, synced)
        else:
            with_global_batchnorm(child)
    return model


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Runs `python -m invoke <argv>` in `nproc` processes on this machine under torchrun's launcher (standalone
    rendezvous on a free local port); returns the exit code: 0, or the first failed process's. Their output is
    this process's; a failed process has already said why, so the launcher's own report is not printed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    cores, gpus = os.cpu_count() or 1, torch.cuda.device_count() if torch.cuda.is_available() else 0
    if nproc > max(cores, gpus):  # each process needs a core or a GPU of its own; more only thrash (or fork-bomb)
        raise PrunedroidError(f"`nproc` {nproc} is more processes than this machine has CPU cores ({cores}) or GPUs "
                              f"({gpus}): pass at most {max(cores, gpus)}")
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2)
    try:
        elastic_launch(config, sys.executable)("-m", "invoke", *argv)
    except ChildFailedError as err:
        return next(iter(err.failures.values())).exitcode or 1
    return 0
