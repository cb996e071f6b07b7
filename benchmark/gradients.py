"""One training step's backward as a pipeline: per-task gradients -> reduce -> combine -> apply.

1. **Per-task gradients** (:func:`per_task_gradients`), at the chosen level. Both levels start with
   one backward of the summed losses through the heads (:func:`z_gradients`), each head reading its
   own alias of the shared representation z: it yields the T gradients at z and the heads' own
   gradients. Heads linear in z with one output each (or stacked, or with ``factored_heads``) read z
   itself, and their gradients at z are the factors ``∂Lᵢ/∂outᵢ`` and the heads' weights
   (:mod:`benchmark.factored`), expanded by one batched product unless the method takes them.

   - ``feature``: the gradients w.r.t. z, ``[T, *z.shape]``; applying the update sends it back through
     the trunk with one more backward. Cost: about one backward of the summed loss. With
     ``factored_heads`` methods that accept them get the factors: no ``[T, *z.shape]`` tensor.
   - ``param``: the Jacobian of the T losses w.r.t. the shared (trunk) parameters, ``[T, P]``, as T
     backwards of z through the trunk alone against those gradients (:func:`jacobian_through`), by a
     loop of ``autograd.grad`` calls (``"loop"``) or one call with ``is_grads_batched``
     (``"batched"``), into a :class:`JacobianBuffer` reused every step; :func:`choose_strategy` picks by
     device and memory. Cost: about T trunk backwards. Methods that need a second, independent
     mini-batch (``Method.batches_per_step == 2``) also get its Jacobian, in ``ctx.extra_grads``.

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

Forwards that are not the step's own (the ``auto`` strategy's memory probe, FAMO's losses after the step)
run inside :func:`side_effect_free`, so that they leave BatchNorm statistics and every RNG stream as
they were.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmark.factored import FactoredGradients, Gradients, dense
from benchmark.method import Method, StepContext
from benchmark.task import Batch, MultiTaskModel, Task

log = logging.getLogger(__name__)

PREFERRED_STRATEGY = {"cuda": "batched"}
"""``jacobian: auto`` by device type (others: ``"loop"``). A fixed rule, not a timing, so that two runs of
one config on one machine never pick differently; on a CPU the batched call is slower (DESIGN §7)."""

MEMORY_HEADROOM = 0.5
"""``auto`` takes the batched call only when its estimated peak is at most this share of free memory."""


def jacobian(losses: Tensor, params: Sequence[Tensor], strategy: str) -> Tensor:
    """The Jacobian ``[T, N]`` of the T ``losses`` w.r.t. ``params`` (flattened, concatenated), each row
    back-propagated from its loss: the reference of :func:`jacobian_through`, which the engine uses.

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
        _flatten_into(grads, params, rows[i])
    return rows


def jacobian_through(
    z: Tensor, z_grads: Sequence[Tensor], params: Sequence[Tensor], strategy: str, out: Tensor | None = None
) -> Tensor:
    """The Jacobian ``[T, N]`` w.r.t. ``params`` of T losses from their gradients ``z_grads`` at ``z``:
    row i is ``(∂z/∂θ)ᵀ gᵢ``, a backward through the trunk alone (the heads were crossed once, for all
    tasks, to get ``gᵢ``). Equal to :func:`jacobian` of the losses (bit for bit on the shipped tasks,
    tested) without its T backwards through all T heads. ``strategy``: ``"loop"`` (T calls) or
    ``"batched"`` (one ``is_grads_batched`` call, T times the memory). Written into ``out`` if given.
    """
    num_tasks = len(z_grads)
    rows = z.new_empty(num_tasks, sum(p.numel() for p in params)) if out is None else out
    if strategy == "batched":
        batched = torch.autograd.grad(
            z, params, torch.stack(list(z_grads)), retain_graph=True, is_grads_batched=True, allow_unused=True
        )
        offset = 0
        for g, p in zip(batched, params, strict=True):
            part = rows[:, offset : offset + p.numel()]
            part.zero_() if g is None else part.copy_(g.reshape(num_tasks, -1))
            offset += p.numel()
        return rows
    for i, grad in enumerate(z_grads):
        grads = torch.autograd.grad(z, params, grad, retain_graph=True, allow_unused=True)
        _flatten_into(grads, params, rows[i])
    return rows


def _flatten_into(grads: Sequence[Tensor | None], params: Sequence[Tensor], row: Tensor) -> None:
    flat = [_zeros_if_none(g, p, p.shape).reshape(-1) for g, p in zip(grads, params, strict=True)]
    torch.cat(flat, out=row)


def _zeros_if_none(grad: Tensor | None, like: Tensor, shape: Sequence[int]) -> Tensor:
    return like.new_zeros(shape) if grad is None else grad


class JacobianBuffer:
    """The Jacobians' storage of one run: one ``[T, P]`` tensor per use (``"main"``, ``"extra"``),
    allocated at the first step and overwritten at every later one (a fresh 120 MiB tensor per step
    costs ~40 ms of page faults, DESIGN §7). A method that keeps gradients across steps copies them
    (tested for every registered method)."""

    def __init__(self) -> None:
        self._tensors: dict[str, Tensor] = {}

    def get(self, key: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """The tensor of ``key``, reallocated only if its shape, dtype or device changed."""
        tensor = self._tensors.get(key)
        if tensor is None or (tensor.shape, tensor.dtype, tensor.device) != (shape, like.dtype, like.device):
            tensor = self._tensors[key] = like.new_empty(shape)
        return tensor


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
        grads: ``[T, *shape]`` per-task gradients (the Jacobian at the param level), or their factors.
        apply: writes an update ``[*shape]`` to the parameters' ``.grad``.
        local_params: parameters whose ``.grad`` this process computed from its own rows alone (the
            reducer syncs them after the update is applied).
    """

    grads: Gradients
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
    buffer: JacobianBuffer | None = None,
    factored: bool = False,
) -> Tensor:
    """Forward ``batch``, combine the per-task gradients with ``method`` and set every ``.grad``.

    ``ctx`` supplies the step, generator and level; its losses, activation and task rows are filled in
    here. ``strategy`` (``"loop"`` or ``"batched"``) computes the param-level Jacobian, into ``buffer``
    when given (the trainer keeps one per run). ``extra_batch``, at the param level, gives
    ``ctx.extra_grads``. ``batch`` is the whole batch: ``reducer`` takes this process's rows of it.
    Gradients are assigned to parameters whose ``.grad`` is ``None``. ``observe`` (diagnostics) is
    handed the per-task gradients at ``ctx.level``: those the method combines, or, for a loss
    weighting, ones computed for it alone by :func:`observed_gradients` (an extra cost on the steps
    that observe). ``factored``: at the feature level, keep the gradients as the linear heads' factors
    (methods that do not accept them get them dense). Returns the whole batch's detached losses ``[T]``.
    """
    ctx.task_rows = batch.task_rows
    local = reducer.shard(batch)
    z = model.trunk(local.inputs)
    if not method.needs_grads:
        if observe is not None:  # one process: config refuses diagnostics in data-parallel runs
            observe(observed_gradients(model, task, local, ctx.level, z, strategy))
        _weighted_backward(model, task, local, batch, method, ctx, z, reducer)
        reducer.local_grads([p for p in model.parameters() if p.grad is not None])
        return ctx.losses
    if extra_batch is not None and ctx.level == "param":
        extra = _extra_jacobian(model, task, extra_batch, strategy, buffer, reducer)
        ctx.extra_grads = reducer.jacobian(extra)
    per_task = per_task_gradients(
        model, task, batch, ctx, z, strategy, method.uses_activation, reducer, buffer, local, factored
    )
    grads = reducer.jacobian(per_task.grads) if ctx.level == "param" else per_task.grads
    with torch.no_grad():
        if observe is not None:
            observe(dense(grads))
        update = method.combine(grads if method.accepts_factored else dense(grads), ctx)
    per_task.apply(update)
    reducer.local_grads(per_task.local_params)
    return ctx.losses


def _shard_losses(
    task: Task, outputs: list[Tensor], local: Batch, batch: Batch, ctx: StepContext, reducer: Reducer
) -> Tensor:
    """This process's share of the whole ``batch``'s losses (``outputs`` are those of its shard
    ``local``); the whole batch's losses go to ``ctx.losses``."""
    shares = reducer.share(task.losses(outputs, local), batch)
    ctx.losses = reducer.total(shares.detach())
    return shares


def _weighted_backward(
    model: MultiTaskModel,
    task: Task,
    local: Batch,
    batch: Batch,
    method: Method,
    ctx: StepContext,
    z: Tensor,
    reducer: Reducer,
) -> None:
    """Loss weighting: one backward of ``sum_i w_i L_i``, the weights taken as constants."""
    losses = _shard_losses(task, model.forward_heads(z), local, batch, ctx, reducer)
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
            z_grads = z_gradients(model, task, batch, batch, StepContext(), z)
            return z_grads.dense() if isinstance(z_grads, FactoredGradients) else torch.stack(z_grads)
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
    buffer: JacobianBuffer | None = None,
    local: Batch | None = None,
    factored: bool = False,
) -> PerTaskGradients:
    """Stage 1 at ``ctx.level``; fills ``ctx.losses``, and ``ctx.activation`` at the feature level (at
    the param level only ``with_activation``: the flattened shared parameters). ``z`` is the trunk's
    output on ``reducer``'s shard of ``batch``: ``local``, when the caller has it already.

    Both levels start with :func:`z_gradients`, which also gives the heads their gradients. The
    feature level stops there (gathering the gradients over the shards; as the heads' factors only
    with ``factored``); the param level continues through the trunk alone, into ``buffer`` when given.
    """
    local = reducer.shard(batch) if local is None else local
    z_grads = z_gradients(model, task, local, batch, ctx, z, reducer, factored, set_head_grads=True)
    if ctx.level == "feature":
        if isinstance(z_grads, FactoredGradients):
            whole = FactoredGradients(reducer.gather(z_grads.coefficients, 1), z_grads.weights)
            return _at_z(model, ctx, z, whole if factored else whole.dense(), reducer)
        return _at_z(model, ctx, z, reducer.gather(torch.stack(z_grads), 1), reducer)
    shared = model.shared_parameters()
    out = _jacobian_out(buffer, "main", task.num_tasks, shared, z)
    matrix = jacobian_through(z, _rows_of(z_grads), shared, strategy, out)
    if with_activation:
        ctx.activation = torch.cat([p.detach().reshape(-1) for p in shared])
    head_params = [p for p in model.heads.parameters() if p.requires_grad]
    return PerTaskGradients(matrix, partial(_assign_flat, shared), head_params)


def z_gradients(
    model: MultiTaskModel,
    task: Task,
    local: Batch,
    batch: Batch,
    ctx: StepContext,
    z: Tensor,
    reducer: Reducer = LOCAL,
    factored: bool = False,
    set_head_grads: bool = False,
) -> FactoredGradients | list[Tensor]:
    """This process's T gradients at z (the trunk's output on its shard ``local`` of ``batch``), from
    one backward of its share of the summed losses through the heads (loss i depends on head i only),
    which sets the heads' ``.grad`` if ``set_head_grads``; the whole batch's losses go to
    ``ctx.losses``.

    Heads linear in z read z itself and the backward stops at their outputs: the gradients are the
    factors ``∂Lᵢ/∂outᵢ`` and ``Wᵢ`` (:class:`FactoredGradients`; their dense form is one batched
    product), when that gives the aliases' gradients bit for bit (one output per head: each entry is one
    product, tested on every shipped task) or a setting allows rounding (``batched_heads``,
    ``factored``). Other heads each read their own alias of z: a list of T dense gradients.
    """
    weights = model.linear_head_weights()
    if factored and weights is None:
        raise ValueError("factored_heads: the model's heads are not LinearHeads of one shape")
    if weights is not None and (factored or model.batched or weights.shape[1] == 1):
        outputs = model.forward_heads(z.detach())
        loss = _shard_losses(task, outputs, local, batch, ctx, reducer).sum()
        coefficients = torch.stack(_gradients(loss, outputs, set_head_grads))
        if coefficients.dim() == z.dim():  # heads that squeeze their one output
            coefficients = coefficients.unsqueeze(-1)
        return FactoredGradients(coefficients, weights)
    aliases = [z.detach().requires_grad_() for _ in range(task.num_tasks)]
    loss = _shard_losses(task, model.forward_each(aliases), local, batch, ctx, reducer).sum()
    return _gradients(loss, aliases, set_head_grads)


def _gradients(loss: Tensor, tensors: Sequence[Tensor], set_head_grads: bool) -> list[Tensor]:
    """The gradients of ``loss`` w.r.t. ``tensors`` (zeros where it does not reach one): with
    ``set_head_grads`` from a backward that also fills the heads' ``.grad`` (it stops at ``tensors``:
    the aliases of z, or the heads' outputs on z detached), else without side effects."""
    if not set_head_grads:
        return _dense(torch.autograd.grad(loss, tensors, allow_unused=True), tensors)
    for tensor in tensors:
        tensor.retain_grad()  # a no-op on the aliases, which are leaves
    loss.backward()
    return _dense([tensor.grad for tensor in tensors], tensors)


def _rows_of(z_grads: FactoredGradients | list[Tensor]) -> Sequence[Tensor]:
    """The T dense gradients at z, one tensor each."""
    return z_grads.dense().unbind(0) if isinstance(z_grads, FactoredGradients) else z_grads


def _at_z(
    model: MultiTaskModel, ctx: StepContext, z: Tensor, grads: Gradients, reducer: Reducer
) -> PerTaskGradients:
    """The feature level's result: the whole batch's gradients at z (and z itself, in
    ``ctx.activation``); the update goes back through the trunk from this process's rows of z."""
    ctx.activation = reducer.gather(z.detach(), 0)

    def apply(update: Tensor) -> None:
        z.backward(reducer.rows(update))

    return PerTaskGradients(grads, apply, [p for p in model.parameters() if p.requires_grad])


def _dense(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> list[Tensor]:
    return [_zeros_if_none(g, a, a.shape) for g, a in zip(grads, like, strict=True)]


def _extra_jacobian(
    model: MultiTaskModel,
    task: Task,
    batch: Batch,
    strategy: str,
    buffer: JacobianBuffer | None,
    reducer: Reducer,
) -> Tensor:
    """This process's part of the Jacobian on a second batch (two-batch methods), through z like the
    main one; heads untouched."""
    local = reducer.shard(batch)
    z = model.trunk(local.inputs)
    z_grads = z_gradients(model, task, local, batch, StepContext(), z, reducer)
    shared = model.shared_parameters()
    out = _jacobian_out(buffer, "extra", task.num_tasks, shared, z)
    return jacobian_through(z, _rows_of(z_grads), shared, strategy, out).detach()


def _jacobian_out(
    buffer: JacobianBuffer | None, key: str, num_tasks: int, shared: Sequence[Tensor], like: Tensor
) -> Tensor | None:
    return None if buffer is None else buffer.get(key, (num_tasks, sum(p.numel() for p in shared)), like)


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


def choose_strategy(device: torch.device, batched_bytes: int) -> str:
    """``jacobian: auto``: the device type's :data:`PREFERRED_STRATEGY`, but the loop wherever the
    batched call's estimated peak ``batched_bytes`` exceeds ``MEMORY_HEADROOM`` of the free memory.

    The rule reads no clock, so it cannot flip between two runs of one config on one machine; it can
    only fall back to the loop where the batched call would not fit. Both strategies give
    bit-identical Jacobians on the shipped tasks (tested), so even then results do not change there.
    """
    if PREFERRED_STRATEGY.get(device.type, "loop") == "loop":
        return "loop"
    free = available_bytes(device)
    if batched_bytes > MEMORY_HEADROOM * free:
        log.warning(
            "batched Jacobian needs about %.0f MiB, %.0f MiB free on %s: using the loop",
            batched_bytes / 2**20, free / 2**20, device,
        )
        return "loop"
    return "batched"


def available_bytes(device: torch.device) -> int:
    """Free memory: ``torch.cuda.mem_get_info`` on a GPU, ``MemAvailable`` of ``/proc/meminfo`` on the CPU
    (where that file is missing, e.g. macOS: assumed unlimited)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return 1 << 62
    kib = next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemAvailable:"))
    return int(kib) * 1024


def batched_bytes_estimate(forward: Callable[[], object], params: Sequence[Tensor], num_tasks: int) -> int:
    """The batched call's peak, estimated as T times one backward's: the tensors ``forward`` saves for
    the backward (every intermediate gradient has the size of one of them) plus one gradient of
    ``params``. Counts distinct storages once."""
    saved: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return num_tasks * (sum(saved.values()) + sum(p.numel() * p.element_size() for p in params))
