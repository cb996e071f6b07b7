"""One training step's backward: per-task gradients at the chosen level, combined, written to ``.grad``.

- Loss-weighting methods (``Method.needs_grads`` false): one backward of ``sum_i w_i L_i``.
- ``feature`` level: the method sees the gradients w.r.t. the shared representation z,
  ``[T, *z.shape]``, all from one backward through the heads; its update goes back through the trunk
  with one more backward. Cost: about one backward of the summed loss.
- ``param`` level: the method sees the Jacobian of the T losses w.r.t. the shared (trunk) parameters,
  ``[T, P]``, from a loop of ``autograd.grad`` calls (``"loop"``) or one call with
  ``is_grads_batched`` (``"batched"``); :func:`choose_strategy` picks between them by measuring.
  Cost: about T backwards, plus one through the heads alone for their gradients. Methods that need a
  second, independent mini-batch (``Method.batches_per_step == 2``) also get its Jacobian, in
  ``ctx.extra_grads``.

Heads receive the gradient of the (summed, for gradient methods) losses: each head its own task's,
computed the same way whatever the strategy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

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


def backward_step(
    model: MultiTaskModel,
    task: Task,
    batch: Batch,
    method: Method,
    ctx: StepContext,
    strategy: str = "loop",
    extra_batch: Batch | None = None,
) -> Tensor:
    """Forward ``batch``, combine the per-task gradients with ``method`` and set every ``.grad``.

    ``ctx`` supplies the step, generator and level; its losses and activation are filled in here.
    ``strategy`` (``"loop"`` or ``"batched"``) computes the param-level Jacobian. ``extra_batch``, at the
    param level, gives ``ctx.extra_grads``. Gradients are assigned to parameters whose ``.grad`` is
    ``None``. Returns the detached losses ``[T]``.
    """
    ctx.task_rows = batch.task_rows
    z = model.trunk(batch.inputs)
    if not method.needs_grads:
        return _weighted_backward(model, task, batch, method, ctx, z)
    if ctx.level == "feature":
        return _feature_backward(model, task, batch, method, ctx, z)
    if extra_batch is not None:
        extra_losses = task.losses(model(extra_batch.inputs), extra_batch)
        ctx.extra_grads = jacobian(extra_losses, model.shared_parameters(), strategy).detach()
    return _param_backward(model, task, batch, method, ctx, z, strategy)


def _weighted_backward(
    model: MultiTaskModel, task: Task, batch: Batch, method: Method, ctx: StepContext, z: Tensor
) -> Tensor:
    """Loss weighting: one backward of ``sum_i w_i L_i``, the weights taken as constants."""
    losses = task.losses(model.forward_heads(z), batch)
    ctx.losses = losses.detach()
    weights = method.weights(ctx.losses, ctx)
    (weights.detach().to(losses.dtype) @ losses).backward()
    return ctx.losses


def _feature_backward(
    model: MultiTaskModel, task: Task, batch: Batch, method: Method, ctx: StepContext, z: Tensor
) -> Tensor:
    """Every head reads its own alias of z, so one backward of the summed losses yields all T
    gradients w.r.t. z (loss i depends on head i only); the update then goes through the trunk."""
    aliases = [z.detach().requires_grad_() for _ in range(task.num_tasks)]  # T leaves, one storage
    losses = task.losses(model.forward_each(aliases), batch)
    ctx.losses, ctx.activation = losses.detach(), z.detach()
    losses.sum().backward()
    grads = torch.stack([_zeros_if_none(a.grad, a, a.shape) for a in aliases])
    with torch.no_grad():
        update = method.combine(grads, ctx)
    z.backward(update)
    return ctx.losses


def _param_backward(
    model: MultiTaskModel,
    task: Task,
    batch: Batch,
    method: Method,
    ctx: StepContext,
    z: Tensor,
    strategy: str,
) -> Tensor:
    """The Jacobian w.r.t. the shared parameters, combined and written to their ``.grad``."""
    losses = task.losses(model.forward_heads(z), batch)
    ctx.losses = losses.detach()
    shared = model.shared_parameters()
    matrix = jacobian(losses, shared, strategy)
    head_params = [p for p in model.heads.parameters() if p.requires_grad]
    if head_params:  # the same call whatever the strategy, so heads never depend on it
        losses.sum().backward(inputs=head_params)
    if method.uses_activation:
        ctx.activation = torch.cat([p.detach().reshape(-1) for p in shared])
    with torch.no_grad():
        _assign_flat(shared, method.combine(matrix, ctx))
    return ctx.losses


def _assign_flat(params: Sequence[Tensor], flat: Tensor) -> None:
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()  # the method may keep ``flat``
        offset += p.numel()


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
