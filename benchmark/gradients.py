"""One training step's backward as a pipeline: per-task gradients -> reduce -> combine -> apply.

1. **Per-task gradients** (:func:`per_task_gradients`), at the chosen level:

   - ``feature``: the gradients w.r.t. the shared representation z, ``[T, *z.shape]``, all from one
     backward through the heads; applying the update sends it back through the trunk with one more
     backward. Cost: about one backward of the summed loss.
   - ``param``: the Jacobian of the T losses w.r.t. the shared (trunk) parameters, ``[T, P]``, from a
     loop of ``autograd.grad`` calls (``"loop"``) or one call with ``is_grads_batched``
     (``"batched"``); :func:`choose_strategy` picks between them by measuring. Cost: about T
     backwards, plus one through the heads alone for their gradients. Methods that need a second,
     independent mini-batch (``Method.batches_per_step == 2``) also get its Jacobian, in
     ``ctx.extra_grads``.

2. **Reduce** (:class:`Reducer`): what one process computed becomes what the whole batch gives.
   In one process it is the identity; a data-parallel reducer (:mod:`benchmark.distributed`) gives
   each process its shard of the batch, sums the processes' shares of the losses and the Jacobian,
   gathers the feature-level gradients of every row, and sums the gradients computed locally (heads,
   the trunk at the feature level, loss-weighted backwards).
3. **Combine**: ``method.combine(grads, ctx)`` under ``torch.no_grad()``, on the whole batch's gradients.
4. **Apply**: the update goes to the trunk's ``.grad`` (param level) or, this process's rows of it,
   through the trunk (feature level).

Loss-weighting methods (``Method.needs_grads`` false) skip 1-4: one backward of ``sum_i w_i L_i``,
then the reducer's gradient step. Heads receive the gradient of the (summed, for gradient methods)
losses: each head its own task's, computed the same way whatever the strategy.

Forwards that are not the step's own (the ``auto`` strategy's probes, FAMO's losses after the step)
run inside :func:`side_effect_free`, so that they leave BatchNorm statistics and every RNG stream as
they were.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from benchmark.method import Method, StepContext
from benchmark.task import Batch, MultiTaskModel, Task

log = logging.getLogger(__name__)

BATCHED_MIN_SPEEDUP = 1.25
"""``auto`` takes the batched call only when it is at least this much faster, so that the choice is
stable; the two strategies' Jacobians are bit-identical on the shipped tasks (tested), so even a
flipped choice leaves results unchanged there."""


def jacobian(losses: Tensor, params: Sequence[Tensor], strategy: str) -> Tensor:
    """The Jacobian ``[T, N]`` of the T ``losses`` w.r.t. ``params`` (flattened, concatenated).

    Keeps the graph: the caller still back-propagates through it.
    """
    num_tasks = losses.shape[0]
    if strategy == "batched":
        eye = torch.eye(num_tasks, dtype=losses.dtype, device=losses.device)
        grads = torch.autograd.grad(
            losses, params, eye, retain_graph=True, is_grads_batched=True, allow_unused=True
        )
        return torch.cat(
            [
                _zeros_if_none(g, p, (num_tasks, *p.shape)).flatten(1)
                for g, p in zip(grads, params, strict=True)
            ],
            dim=1,
        )
    rows = losses.new_empty(num_tasks, sum(p.numel() for p in params))
    for i in range(num_tasks):
        grads = torch.autograd.grad(losses[i], params, retain_graph=True, allow_unused=True)
        torch.cat(
            [_zeros_if_none(g, p, p.shape).reshape(-1) for g, p in zip(grads, params, strict=True)],
            out=rows[i],
        )
    return rows


def _zeros_if_none(grad: Tensor | None, like: Tensor, shape: Sequence[int]) -> Tensor:
    return like.new_zeros(shape) if grad is None else grad


class Reducer:
    """Stage 2 of the step: turns per-process gradients into whole-batch ones. This one is the
    identity, for a run in one process; a data-parallel run plugs in one that shards the batch and
    communicates (:class:`benchmark.distributed.DataParallel`).

    Every loss a process computes on its shard goes through :meth:`share` first, so that the gradients
    it then computes are its exact part of the whole batch's: summing them over the processes gives the
    single-process gradients.
    """

    def shard(self, batch: Batch) -> Batch:
        """This process's rows of the whole ``batch``."""
        return batch

    def share(self, losses: Tensor, batch: Batch) -> Tensor:
        """This process's share ``[T]`` of the whole ``batch``'s losses, from the ``losses`` of its
        shard (differentiable)."""
        return losses

    def total(self, shares: Tensor) -> Tensor:
        """The whole batch's value from this process's ``shares`` (losses): their sum over processes."""
        return shares

    def jacobian(self, matrix: Tensor) -> Tensor:
        """The per-task gradients of the whole batch from this process's ``[T, P]`` Jacobian."""
        return matrix

    def gather(self, rows: Tensor, dim: int) -> Tensor:
        """Every process's rows (along ``dim``) of a per-row tensor, in batch order."""
        return rows

    def rows(self, whole: Tensor) -> Tensor:
        """This process's rows (along dim 0) of a whole-batch tensor."""
        return whole

    def local_grads(self, params: Sequence[Tensor]) -> None:
        """Make the ``.grad`` that this process computed for ``params`` the whole batch's."""


LOCAL = Reducer()


@dataclass
class PerTaskGradients:
    """Stage 1's output: the gradients a method combines, and how its update is applied.

    Attributes:
        grads: ``[T, *shape]`` per-task gradients (the Jacobian at the param level).
        apply: writes an update ``[*shape]`` to the parameters' ``.grad``.
        local_params: parameters whose ``.grad`` this process computed from its own rows alone (the
            reducer syncs them after the update is applied).
    """

    grads: Tensor
    apply: Callable[[Tensor], None]
    local_params: list[Tensor]


def backward_step(
    model: MultiTaskModel,
    task: Task,
    batch: Batch,
    method: Method,
    ctx: StepContext,
    strategy: str = "loop",
    extra_batch: Batch | None = None,
    reducer: Reducer = LOCAL,
    observe: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """Forward ``batch``, combine the per-task gradients with ``method`` and set every ``.grad``.

    ``ctx`` supplies the step, generator and level; its losses, activation and task rows are filled in
    here. ``strategy`` (``"loop"`` or ``"batched"``) computes the param-level Jacobian. ``extra_batch``,
    at the param level, gives ``ctx.extra_grads``. ``batch`` is the whole batch: ``reducer`` takes this
    process's rows of it. Gradients are assigned to parameters whose ``.grad`` is ``None``. ``observe``
    (diagnostics) is handed the per-task gradients at ``ctx.level``: those the method combines, or, for
    a loss weighting, ones computed for it alone by :func:`observed_gradients` (an extra cost on the
    steps that observe). Returns the whole batch's detached losses ``[T]``.
    """
    ctx.task_rows = batch.task_rows
    local = reducer.shard(batch)
    z = model.trunk(local.inputs)
    if not method.needs_grads:
        if observe is not None:  # one process: config refuses diagnostics in data-parallel runs
            observe(observed_gradients(model, task, local, ctx.level, z, strategy))
        _weighted_backward(model, task, batch, method, ctx, z, reducer)
        reducer.local_grads([p for p in model.parameters() if p.grad is not None])
        return ctx.losses
    if extra_batch is not None and ctx.level == "param":
        extra_local = reducer.shard(extra_batch)
        extra_losses = reducer.share(task.losses(model(extra_local.inputs), extra_local), extra_batch)
        extra = jacobian(extra_losses, model.shared_parameters(), strategy).detach()
        ctx.extra_grads = reducer.jacobian(extra)
    per_task = per_task_gradients(
        model, task, batch, ctx, z, strategy, method.uses_activation, reducer
    )
    grads = reducer.jacobian(per_task.grads) if ctx.level == "param" else per_task.grads
    with torch.no_grad():
        if observe is not None:
            observe(grads)
        update = method.combine(grads, ctx)
    per_task.apply(update)
    reducer.local_grads(per_task.local_params)
    return ctx.losses


def _shard_losses(
    task: Task, outputs: list[Tensor], batch: Batch, ctx: StepContext, reducer: Reducer
) -> Tensor:
    """This process's share of the whole ``batch``'s losses (``outputs`` are its shard's); the whole
    batch's losses go to ``ctx.losses``."""
    shares = reducer.share(task.losses(outputs, reducer.shard(batch)), batch)
    ctx.losses = reducer.total(shares.detach())
    return shares


def _weighted_backward(
    model: MultiTaskModel,
    task: Task,
    batch: Batch,
    method: Method,
    ctx: StepContext,
    z: Tensor,
    reducer: Reducer,
) -> None:
    """Loss weighting: one backward of ``sum_i w_i L_i``, the weights taken as constants."""
    losses = _shard_losses(task, model.forward_heads(z), batch, ctx, reducer)
    weights = method.weights(ctx.losses, ctx)
    (weights.detach().to(losses.dtype) @ losses).backward()


def observed_gradients(
    model: MultiTaskModel, task: Task, batch: Batch, level: str, z: Tensor, strategy: str = "loop"
) -> Tensor:
    """Per-task gradients at ``level`` for a method that does not compute them (a loss weighting),
    leaving every ``.grad``, buffer and RNG stream as they were: at the feature level one backward
    through the heads, at the param level about T backwards through the trunk (z's graph is kept).
    Only the heads run forward again, so only their buffers are restored (the trunk's are saved in
    z's graph and must not be written)."""
    with side_effect_free(model.heads):
        if level == "feature":
            aliases = [z.detach().requires_grad_() for _ in range(task.num_tasks)]
            losses = task.losses(model.forward_each(aliases), batch)
            grads = torch.autograd.grad(losses.sum(), aliases, allow_unused=True)
            return torch.stack([_zeros_if_none(g, a, a.shape) for g, a in zip(grads, aliases, strict=True)])
        losses = task.losses(model.forward_heads(z), batch)
        return jacobian(losses, model.shared_parameters(), strategy).detach()


def per_task_gradients(
    model: MultiTaskModel,
    task: Task,
    batch: Batch,
    ctx: StepContext,
    z: Tensor,
    strategy: str = "loop",
    with_activation: bool = False,
    reducer: Reducer = LOCAL,
) -> PerTaskGradients:
    """Stage 1 at ``ctx.level``; fills ``ctx.losses``, and ``ctx.activation`` at the feature level (at
    the param level only ``with_activation``: the flattened shared parameters). ``z`` is the trunk's
    output on ``reducer``'s shard of ``batch``; feature-level gradients are gathered over the shards."""
    if ctx.level == "feature":
        return _feature_gradients(model, task, batch, ctx, z, reducer)
    return _param_gradients(model, task, batch, ctx, z, strategy, with_activation, reducer)


def _feature_gradients(
    model: MultiTaskModel, task: Task, batch: Batch, ctx: StepContext, z: Tensor, reducer: Reducer
) -> PerTaskGradients:
    """Every head reads its own alias of z, so one backward of the summed losses yields all T
    gradients w.r.t. z (loss i depends on head i only); the update then goes through the trunk."""
    aliases = [z.detach().requires_grad_() for _ in range(task.num_tasks)]  # T leaves, one storage
    losses = _shard_losses(task, model.forward_each(aliases), batch, ctx, reducer)
    ctx.activation = reducer.gather(z.detach(), 0)
    losses.sum().backward()
    grads = reducer.gather(torch.stack([_zeros_if_none(a.grad, a, a.shape) for a in aliases]), 1)

    def apply(update: Tensor) -> None:
        z.backward(reducer.rows(update))

    return PerTaskGradients(grads, apply, [p for p in model.parameters() if p.requires_grad])


def _param_gradients(
    model: MultiTaskModel,
    task: Task,
    batch: Batch,
    ctx: StepContext,
    z: Tensor,
    strategy: str,
    with_activation: bool,
    reducer: Reducer,
) -> PerTaskGradients:
    """The Jacobian w.r.t. the shared parameters; the heads get their gradients here, the trunk its
    ``.grad`` when the update is applied. ``with_activation``: also gather the shared parameters into
    ``ctx.activation``."""
    losses = _shard_losses(task, model.forward_heads(z), batch, ctx, reducer)
    shared = model.shared_parameters()
    matrix = jacobian(losses, shared, strategy)
    head_params = [p for p in model.heads.parameters() if p.requires_grad]
    if head_params:  # the same call whatever the strategy, so heads never depend on it
        losses.sum().backward(inputs=head_params)
    if with_activation:
        ctx.activation = torch.cat([p.detach().reshape(-1) for p in shared])
    return PerTaskGradients(matrix, partial(_assign_flat, shared), head_params)


def _assign_flat(params: Sequence[Tensor], flat: Tensor) -> None:
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()  # the method may keep ``flat``
        offset += p.numel()


@contextmanager
def side_effect_free(model: nn.Module) -> Iterator[None]:
    """Run forwards that are not the step's own (probes, FAMO's losses after the step) so that the
    model's buffers (BatchNorm statistics) and torch's RNG streams (dropout) end as they were."""
    saved = [b.detach().clone() for b in model.buffers()]
    devices = sorted({b.device.index or 0 for b in model.parameters() if b.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for buffer, value in zip(model.buffers(), saved, strict=True):
                    buffer.copy_(value)


def choose_strategy(probe: Callable[[str], None], repeats: int = 3) -> tuple[str, dict[str, float]]:
    """Time ``probe(strategy)`` for the loop and the batched call; return the choice and the times (ms).

    The batched call wins only when it is ``BATCHED_MIN_SPEEDUP`` times faster; if it raises (an op
    without a batching rule), the loop is used.
    """
    times: dict[str, float] = {}
    for strategy in ("loop", "batched"):
        try:
            probe(strategy)  # warm-up
            start = time.perf_counter()
            for _ in range(repeats):
                probe(strategy)
            times[strategy] = (time.perf_counter() - start) / repeats * 1e3
        except RuntimeError as err:
            log.warning("batched per-task gradients unavailable, using the loop: %s", err)
            return "loop", times
    faster = times["loop"] >= BATCHED_MIN_SPEEDUP * times["batched"]
    return ("batched" if faster else "loop"), times
