"""The one method interface: per-task gradients in, one update out.

A method sees ``grads`` of shape ``[T, *shape]``: at the ``param`` level the Jacobian of the T losses
with respect to the shared parameters (``[T, P]``); at the ``feature`` level the gradients of the losses
with respect to the shared representation z (``[T, B, ...]``). It returns the update, shape ``[*shape]``.

Loss-weighting methods also implement :meth:`Method.weights`; the engine then skips per-task gradients
and runs one backward of ``sum_i w_i L_i``. The engine calls ``combine`` under ``torch.no_grad()``.
Methods with learnable state are ``nn.Module`` s: they set their own parameters' ``.grad`` inside
``weights``/``combine`` (with ``torch.enable_grad()`` where needed) and the trainer steps their optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from benchmark.registry import METHODS, hyperparameters

Level = Literal["param", "feature"]
LEVELS: tuple[str, ...] = ("param", "feature")


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
    """

    losses: Tensor | None = None
    step: int = 0
    generator: torch.Generator | None = None
    level: str = "param"
    activation: Tensor | None = None
    task_rows: Tensor | None = None


class Method(nn.Module):
    """Base class of every multiloss method. Subclasses register with ``@METHODS.register("key")``.

    Class attributes:
        name: the registry key (set by the decorator).
        description: one line for ``run_all.py list``.
        citation: the paper, ``Author et al. Year, Venue``.
        level: the level the method runs at unless a suite says otherwise.
        uses_activation: whether ``combine`` reads ``ctx.activation`` (at the param level the engine
            then gathers the shared parameters into one vector each step).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    level: ClassVar[str] = "param"
    uses_activation: ClassVar[bool] = False

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks = num_tasks

    def combine(self, grads: Tensor, ctx: StepContext | None = None) -> Tensor:
        """``grads``: ``[T, *shape]`` per-task gradients -> the update, ``[*shape]``."""
        raise NotImplementedError

    def weights(self, losses: Tensor, ctx: StepContext | None = None) -> Tensor | None:
        """Loss weights ``[T]``; loss-weighting methods override this (see :class:`WeightingMethod`),
        and overriding it is what makes the engine take one backward (:attr:`needs_grads`)."""
        return None

    @property
    def needs_grads(self) -> bool:
        """Whether the engine must compute per-task gradients (false for loss-weighting methods)."""
        return type(self).weights is Method.weights

    def check_grads(self, grads: Tensor) -> None:
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


class WeightingMethod(Method):
    """A method defined by loss weights: ``combine`` is ``sum_i w_i g_i``, computed in one backward."""

    def weights(self, losses: Tensor, ctx: StepContext | None = None) -> Tensor:
        raise NotImplementedError

    def combine(self, grads: Tensor, ctx: StepContext | None = None) -> Tensor:
        self.check_grads(grads)
        ctx = ctx or StepContext()
        losses = ctx.losses if ctx.losses is not None else grads.new_zeros(self.num_tasks)
        w = self.weights(losses, ctx).to(grads.dtype)
        return (w @ grads.flatten(1)).view(grads.shape[1:])


def get_method(name: str, num_tasks: int, **hparams: Any) -> Method:
    """``get_method("pcgrad", num_tasks=3).combine(J)``."""
    return METHODS.create(name, num_tasks, **hparams)
