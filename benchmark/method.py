"""The one method interface: per-task gradients in, one update out.

A method sees ``grads`` of shape ``[T, *shape]``: at the ``param`` level the Jacobian of the T losses
with respect to the shared parameters (``[T, P]``); at the ``feature`` level the gradients of the losses
with respect to the shared representation z (``[T, B, ...]``). It returns the update, shape ``[*shape]``.

Three bases keep each method short (after TorchJD's weighted aggregators):

- :class:`WeightedMethod`: the update is ``Σᵢ wᵢ gᵢ``; the method only says how to get ``w`` [T].
- :class:`GramianMethod`: the same, with ``w`` computed from the T x T Gramian ``J Jᵀ`` alone.
- :class:`WeightingMethod`: ``w`` from the losses alone (:meth:`Method.weights`); the engine then skips
  per-task gradients and runs one backward of ``Σᵢ wᵢ Lᵢ``.

:class:`Composed` applies any weighting before any method (``{name: graddrop, weighting: gradnorm}``
in a suite); :func:`build_method` builds a suite's method entry. The engine calls ``combine`` under
``torch.no_grad()``. Methods with learnable state are ``nn.Module`` s: they set their own parameters'
``.grad`` inside ``weights``/``combine`` (with ``torch.enable_grad()`` where needed) and the trainer steps
their optimizer.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from benchmark.factored import Gradients, gramian, weighted_sum
from benchmark.registry import METHODS, hyperparameters
from benchmark.specs import PluginSpec

Level = Literal["param", "feature"]
LEVELS: tuple[str, ...] = ("param", "feature")
HALF_DTYPES = (torch.float16, torch.bfloat16)


def in_float32(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``fn(self, values, ...)`` run outside any ``torch.autocast`` region, with float16/bfloat16
    ``values`` cast to float32: a method's arithmetic never runs in reduced precision (mixed precision,
    :mod:`benchmark.amp`). Applied to every ``combine`` and ``weights`` by :class:`Method`."""

    @functools.wraps(fn)
    def wrapper(self: Method, values: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        with torch.autocast(values.device.type, enabled=False):
            return fn(self, values.float() if values.dtype in HALF_DTYPES else values, *args, **kwargs)

    return wrapper


@dataclass
class StepContext:
    """What a method may need besides the gradients; every field has a usable default.

    Attributes:
        losses: the T task losses of this step, detached, ``[T]``.
        step: the optimisation step, from 0.
        generator: seeded RNG of the run, on the gradients' device (``None``: torch's global RNG).
        level: ``"param"`` or ``"feature"``.
        activation: the point the gradients are taken at: the shared representation z (feature level)
            or the flattened shared parameters (param level, only for methods that set
            ``uses_activation``). Same shape as one task's gradient.
        task_rows: ``[T, B]`` bool, which batch rows each loss is computed on (batch-separated losses,
            e.g. transfer learning); ``None`` when every loss uses the whole batch.
        epoch: the training epoch (``step // Task.steps_per_epoch``), for epoch-level statistics (DWA).
        extra_grads: per-task gradients, like ``grads``, on an independent mini-batch of the same step:
            filled at the param level for methods with ``batches_per_step == 2`` (SDMGrad, MoDo);
            ``None`` otherwise, and methods then fall back to ``grads``.
    """

    losses: Tensor | None = None
    step: int = 0
    generator: torch.Generator | None = None
    level: str = "param"
    activation: Tensor | None = None
    task_rows: Tensor | None = None
    epoch: int = 0
    extra_grads: Tensor | None = None


class Method(nn.Module):
    """Base class of every multiloss method. Subclasses register with ``@METHODS.register("key")``.

    Class attributes:
        name: the registry key (set by the decorator).
        description: one line for ``run_all.py list``.
        citation: the paper, ``Author et al. Year, Venue``.
        level: the level the method runs at unless a suite says otherwise.
        uses_activation: whether ``combine`` reads ``ctx.activation`` (at the param level the engine
            then gathers the shared parameters into one vector each step).
        batches_per_step: 2 for methods that need gradients on a second, independent mini-batch
            (``ctx.extra_grads``, param level only).
        needs_losses_after_step: whether the trainer calls :meth:`losses_after_step` (FAMO).
        default_method_lr: the learning rate of the method's own parameters unless the suite sets
            ``method_lr`` (``None``: the model's ``lr``).

        deterministic: the update depends on the gradients, losses and step alone: never on
            ``ctx.generator`` or any other random draw (a run of a deterministic method on a deterministic
            task is trained once whatever the seeds; the shared property tests check the claim).
        state_attributes: the attributes the method changes from one step to the next besides its
            parameters and buffers (counters, loss histories, tracked gradients: numbers, tensors,
            lists and tuples of them, or ``None``). They are part of its ``state_dict`` (through
            :meth:`get_extra_state`), so that a checkpointed run resumes exactly; the tests check that
            no other attribute changes.

    Properties a method claims, checked for it by the shared property tests:
        permutation_invariant: permuting the tasks (gradients and losses) leaves the update unchanged.
        linear_under_scaling: ``combine(c J) == c combine(J)`` for every ``c > 0``.
        non_conflicting: the update never conflicts with a task, ``J @ update >= 0``.

    ``accepts_factored``: ``combine`` also takes the per-task gradients at z as the linear heads'
    factors (:class:`benchmark.factored.FactoredGradients`, with ``train: {factored_heads: true}``);
    other methods get them dense.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    level: ClassVar[str] = "param"
    uses_activation: ClassVar[bool] = False
    batches_per_step: ClassVar[int] = 1
    needs_losses_after_step: ClassVar[bool] = False
    default_method_lr: ClassVar[float | None] = None
    deterministic: ClassVar[bool] = False
    state_attributes: ClassVar[tuple[str, ...]] = ()
    permutation_invariant: ClassVar[bool] = False
    linear_under_scaling: ClassVar[bool] = False
    non_conflicting: ClassVar[bool] = False
    accepts_factored: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("combine", "weights"):
            if name in cls.__dict__:
                setattr(cls, name, in_float32(cls.__dict__[name]))

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks = num_tasks

    def combine(self, grads: Gradients, ctx: StepContext | None = None) -> Tensor:
        """``grads``: ``[T, *shape]`` per-task gradients -> the update, ``[*shape]``."""
        raise NotImplementedError

    def weights(self, losses: Tensor, ctx: StepContext | None = None) -> Tensor | None:
        """Loss weights ``[T]``; loss-weighting methods override this (see :class:`WeightingMethod`),
        and overriding it is what makes the engine take one backward (:attr:`needs_grads`)."""
        return None

    def get_extra_state(self) -> dict[str, Any]:
        """The :attr:`state_attributes` by name, saved with the ``state_dict``."""
        return {name: getattr(self, name) for name in self.state_attributes}

    def set_extra_state(self, state: Any) -> None:
        """Restore the :attr:`state_attributes` from :meth:`get_extra_state`'s dict (copied, so that
        in-place updates never reach the source)."""
        expected = set(self.state_attributes)
        if not isinstance(state, dict) or set(state) != expected:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            name = self.name or type(self).__name__
            raise ValueError(f"{name}: extra state {got}, expected the attributes {sorted(expected)}")
        for name in self.state_attributes:
            setattr(self, name, copy.deepcopy(state[name]))

    def check_level(self, level: str) -> None:
        """Raise ``ValueError`` if this method, with its hyperparameters, is undefined at ``level``
        (checked when a suite is loaded)."""

    def losses_after_step(self, losses: Tensor) -> None:
        """The T losses of this step's batch recomputed after the optimiser step (detached); called
        only when :attr:`needs_losses_after_step` is set."""

    @property
    def needs_grads(self) -> bool:
        """Whether the engine must compute per-task gradients (false for loss-weighting methods)."""
        return type(self).weights is Method.weights

    def check_grads(self, grads: Gradients) -> None:
        """Raise ``ValueError`` unless ``grads`` is ``[num_tasks, ...]`` with at least one more dim."""
        if grads.dim() < 2 or grads.shape[0] != self.num_tasks:
            raise ValueError(
                f"{self.name or type(self).__name__}: expected gradients of shape "
                f"[{self.num_tasks}, ...], got {tuple(grads.shape)}"
            )

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Hyperparameters and their defaults, from the constructor signature."""
        return hyperparameters(cls, skip=("num_tasks",))

    @classmethod
    def default_grid(cls, num_tasks: int) -> dict[str, list[Any]]:
        """Hyperparameter values a suite expands into one run each unless it sets them (STL: one run
        per task)."""
        return {}


class WeightedMethod(Method):
    """A method whose update is ``Σᵢ wᵢ gᵢ``: subclasses implement :meth:`task_weights`. Any
    ``WeightedMethod`` can serve as the ``weighting`` of a :class:`Composed` method."""

    def task_weights(self, grads: Gradients, ctx: StepContext) -> Tensor:
        """The weights ``[T]`` of this step's gradients ``grads`` ``[T, *shape]``."""
        raise NotImplementedError

    def combine(self, grads: Gradients, ctx: StepContext | None = None) -> Tensor:
        self.check_grads(grads)
        return weighted_sum(self.task_weights(grads, ctx or StepContext()).to(grads.dtype), grads)


class GramianMethod(WeightedMethod):
    """A weighted method that needs only the Gramian ``G = J Jᵀ`` ``[T, T]`` (MGDA, UPGrad, IMTL-G, ...):
    subclasses implement :meth:`gramian_weights`; the Gramian is computed once per step, from the
    heads' factors where the engine gives them (``accepts_factored``)."""

    accepts_factored = True

    def gramian_weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        """The weights ``[T]`` from the Gramian of this step's gradients."""
        raise NotImplementedError

    def task_weights(self, grads: Gradients, ctx: StepContext) -> Tensor:
        return self.gramian_weights(gramian(grads), ctx)


class WeightingMethod(WeightedMethod):
    """A method defined by loss weights (:meth:`weights`): the engine computes its update in one
    backward of ``Σᵢ wᵢ Lᵢ``; ``combine`` gives the same update from per-task gradients."""

    def weights(self, losses: Tensor, ctx: StepContext | None = None) -> Tensor:
        raise NotImplementedError

    def task_weights(self, grads: Tensor, ctx: StepContext) -> Tensor:
        losses = ctx.losses if ctx.losses is not None else grads.new_zeros(self.num_tasks)
        return self.weights(losses, ctx)


class Composed(Method):
    """``weighting ∘ method``: the method combines the weighted gradients ``wᵢ gᵢ`` (and sees the
    weighted losses ``wᵢ Lᵢ``), e.g. GradDrop on GradNorm-weighted gradients as in the GradDrop paper.

    When both parts are loss weightings the weights multiply and the engine needs one backward.
    Learnable parameters of either part are trained as usual (they are submodules).
    """

    def __init__(self, weighting: Method, method: Method) -> None:
        if not isinstance(weighting, WeightedMethod):
            raise ValueError(
                f"{weighting.name!r} cannot be a weighting: it does not produce task weights "
                "(use a loss weighting such as 'uw' or a weighted method such as 'gradnorm')"
            )
        if weighting.num_tasks != method.num_tasks:
            raise ValueError(
                f"weighting {weighting.name!r} has {weighting.num_tasks} tasks, "
                f"method {method.name!r} has {method.num_tasks}"
            )
        super().__init__(method.num_tasks)
        self.weighting, self.method = weighting, method
        self.name = f"{weighting.name}+{method.name}"
        self.level = method.level
        self.uses_activation = method.uses_activation
        self.batches_per_step = max(weighting.batches_per_step, method.batches_per_step)
        self.needs_losses_after_step = weighting.needs_losses_after_step or method.needs_losses_after_step
        self.default_method_lr = weighting.default_method_lr or method.default_method_lr
        self.deterministic = weighting.deterministic and method.deterministic

    @property
    def needs_grads(self) -> bool:
        return self.weighting.needs_grads or self.method.needs_grads

    def weights(self, losses: Tensor, ctx: StepContext | None = None) -> Tensor | None:
        if self.needs_grads:
            return None
        ctx = ctx or StepContext(losses=losses)
        first = self.weighting.weights(losses, ctx)
        return first * self.method.weights(first * losses, dataclasses.replace(ctx, losses=first * losses))

    def combine(self, grads: Tensor, ctx: StepContext | None = None) -> Tensor:
        self.check_grads(grads)
        ctx = ctx or StepContext()
        w = self.weighting.task_weights(grads, ctx).to(grads.dtype)
        column = w.view(-1, *[1] * (grads.dim() - 1))
        inner = dataclasses.replace(  # what the method sees: the weighted losses and second-batch gradients
            ctx,
            losses=None if ctx.losses is None else ctx.losses * w.to(ctx.losses.dtype),
            extra_grads=None if ctx.extra_grads is None else ctx.extra_grads * column,
        )
        if isinstance(self.method, GramianMethod):  # the weighted Gramian, without weighted copies of J
            matrix = grads.flatten(1)
            gramian = (matrix @ matrix.T) * w[:, None] * w[None, :]
            alpha = self.method.gramian_weights(gramian, inner).to(grads.dtype)
            return ((alpha * w) @ matrix).view(grads.shape[1:])
        return self.method.combine(grads * column, inner)

    def check_level(self, level: str) -> None:
        self.weighting.check_level(level)
        self.method.check_level(level)

    def losses_after_step(self, losses: Tensor) -> None:
        for part in (self.weighting, self.method):
            if part.needs_losses_after_step:
                part.losses_after_step(losses)


def accumulate_grad(parameter: nn.Parameter, grad: Tensor) -> None:
    """Add ``grad`` to ``parameter.grad`` (set it when ``None``): how a method gives its learnable
    parameters the gradient of its own objective, for the trainer's method optimiser."""
    grad = grad.to(parameter)
    parameter.grad = grad if parameter.grad is None else parameter.grad + grad


def get_method(name: str, num_tasks: int, **hparams: Any) -> Method:
    """``get_method("pcgrad", num_tasks=3).combine(J)``."""
    return METHODS.create(name, num_tasks, **hparams)


def build_method(spec: PluginSpec, num_tasks: int) -> Method:
    """The method of a suite entry, composed with its ``weighting`` when it has one."""
    method = get_method(spec.name, num_tasks, **spec.params)
    if spec.weighting is None:
        return method
    return Composed(build_method(spec.weighting, num_tasks), method)
