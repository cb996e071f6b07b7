"""Data-parallel runs: one run trained on N processes with ``torch.distributed``, with the results of
one process on the whole batch (to float tolerance).

``train: {distributed: N}`` makes :func:`launch` start N processes (``torch.multiprocessing.spawn``,
a process group over a free localhost port; gloo on the CPU, NCCL on CUDA, process r on ``cuda:r``).
Each builds the same run from the same seed (identical model, identical data and method generators),
draws the same whole batch and takes its own contiguous shard of rows (:class:`DataParallel`).
Every method then sees exactly the whole batch's gradients:

- loss weighting: the losses handed to ``method.weights`` are the whole batch's (summed shares), so
  every process gets the same weights; one backward on the shard, then a sum of every ``.grad``
  (DDP's all-reduce);
- param level: every process's ``[T, P]`` Jacobian share is summed (all-reduce), so every process
  combines the same matrix with an identically seeded generator (PCGrad's order, random draws agree);
- feature level: the per-row gradients at z (and z itself) are all-gathered into ``[T, B, ...]``; every
  process combines the whole tensor, back-propagates its own rows of the update through its trunk,
  and the trunk's and heads' ``.grad`` are summed.

A loss must be a mean over the batch's rows (over each loss's own rows with ``task_rows``, as
:func:`benchmark.task.owned_mean` computes it): a process's share of a loss is its shard's loss times
the fraction of the rows it holds, so the shares sum to the whole batch's loss and their gradients
to the whole batch's gradient. BatchNorm's statistics would be per shard: on CUDA BatchNorm layers
become ``SyncBatchNorm`` (statistics over the whole batch); on the CPU, where ``SyncBatchNorm`` does not
run, a model with BatchNorm is refused. Every process evaluates (the models are identical) and
process 0's result is returned.
"""

from __future__ import annotations

import pickle
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from benchmark.gradients import Reducer
from benchmark.specs import RunSpec, TrainSpec
from benchmark.task import Batch

R = TypeVar("R")


def shard_bounds(size: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of process ``rank`` in a batch of ``size`` rows: contiguous shards, the
    first ``size % world_size`` one row longer (``torch.tensor_split``'s split)."""
    base, extra = divmod(size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class DataParallel(Reducer):
    """The reducer of process ``rank`` of ``world_size`` in the default process group."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def _bounds(self, size: int) -> tuple[int, int]:
        return shard_bounds(size, self.world_size, self.rank)

    def shard(self, batch: Batch) -> Batch:
        start, stop = self._bounds(batch_rows(batch))
        rows = None if batch.task_rows is None else batch.task_rows[:, start:stop]
        return Batch(task_rows=rows, **{k: v[start:stop] for k, v in batch.tensors.items()})

    def share(self, losses: Tensor, batch: Batch) -> Tensor:
        """The shard's losses times the fraction of each loss's rows the shard holds; a loss with no
        row here contributes exactly zero (not 0 x NaN)."""
        size = batch_rows(batch)
        start, stop = self._bounds(size)
        if batch.task_rows is None:
            fraction = torch.full_like(losses, (stop - start) / size)
        else:
            owned = batch.task_rows.to(losses.device)
            fraction = (owned[:, start:stop].sum(1) / owned.sum(1).clamp(min=1)).to(losses.dtype)
        return torch.where(fraction > 0, losses * fraction, torch.zeros_like(losses))

    def total(self, shares: Tensor) -> Tensor:
        summed = shares.clone()
        dist.all_reduce(summed)
        return summed

    def jacobian(self, matrix: Tensor) -> Tensor:
        return self.total(matrix)

    def gather(self, rows: Tensor, dim: int) -> Tensor:
        """All-gather along ``dim``; shards may differ by a row (padded for the collective)."""
        sizes = [torch.zeros(1, dtype=torch.long, device=rows.device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([rows.shape[dim]], device=rows.device))
        counts = [int(s) for s in sizes]
        pad = [0, 0] * (rows.dim() - 1 - dim) + [0, max(counts) - rows.shape[dim]]
        padded = nn.functional.pad(rows, pad)
        pieces = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(pieces, padded.contiguous())
        return torch.cat([p.narrow(dim, 0, n) for p, n in zip(pieces, counts, strict=True)], dim)

    def rows(self, whole: Tensor) -> Tensor:
        start, stop = self._bounds(whole.shape[0])
        return whole[start:stop]

    def local_grads(self, params: Sequence[Tensor]) -> None:
        """Sum every ``.grad`` over the processes: one all-reduce per dtype of a flat buffer."""
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for p in params:
            if p.grad is not None:
                by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            for grad, summed in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
                grad.copy_(summed.view_as(grad))


def batch_rows(batch: Batch) -> int:
    """The number of rows of ``batch``; a batch without data rows (the toys) cannot be sharded."""
    if not batch.tensors:
        raise ValueError("data-parallel training needs a batch with data rows; this task's has none")
    sizes = {name: len(values) for name, values in batch.tensors.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"data-parallel training needs one row count per batch tensor, got {sizes}")
    return next(iter(sizes.values()))


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with whole-batch BatchNorm statistics: ``SyncBatchNorm`` on CUDA; a model with
    BatchNorm on the CPU raises (``SyncBatchNorm`` runs on GPUs only)."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    if device.type != "cuda":
        raise ValueError(
            "data-parallel training on the CPU cannot train a model with BatchNorm: its statistics "
            "would be per shard (SyncBatchNorm needs CUDA); use distributed: 1 or a CUDA device"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def launch(spec: RunSpec, worker: Callable[[RunSpec, Reducer, bool], R], progress: bool = False) -> R:
    """Run ``worker(spec_of_rank, reducer, progress)`` on ``spec.train.distributed`` processes and
    return process 0's result; an exception in any process raises here with its traceback."""
    world_size = spec.train.distributed
    device = torch.device(spec.train.device)
    if device.type == "cuda" and torch.cuda.device_count() < world_size:
        raise ValueError(
            f"distributed: {world_size} processes on {spec.train.device} need {world_size} CUDA "
            f"devices, this machine has {torch.cuda.device_count()}"
        )
    threads = max(1, torch.get_num_threads() // world_size)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.pkl"
        args = (world_size, free_port(), spec, worker, progress, out, threads)
        torch.multiprocessing.spawn(_process, args=args, nprocs=world_size)
        return pickle.loads(out.read_bytes())


def _process(
    rank: int,
    world_size: int,
    port: int,
    spec: RunSpec,
    worker: Callable[[RunSpec, Reducer, bool], object],
    progress: bool,
    out: Path,
    threads: int,
) -> None:
    torch.set_num_threads(threads)
    train = rank_train_spec(spec.train, rank)
    backend = "nccl" if train.device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(train.device))
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        result = worker(replace(spec, train=train), DataParallel(rank, world_size), progress and rank == 0)
        if rank == 0:
            result.spec = spec  # the run as configured, not process 0's device
            out.write_bytes(pickle.dumps(result))
    finally:
        dist.destroy_process_group()


def rank_train_spec(train: TrainSpec, rank: int) -> TrainSpec:
    """Process ``rank``'s settings: on CUDA, process r trains on ``cuda:r`` (whatever index was given)."""
    return replace(train, device=f"cuda:{rank}") if train.device.startswith("cuda") else train


def free_port() -> int:
    """A TCP port on localhost that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
