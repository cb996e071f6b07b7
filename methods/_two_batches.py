"""Methods that estimate their weights from two independent batches' gradients (SDMGrad, MoDo)."""

from __future__ import annotations

from torch import Tensor

from benchmark.method import Method, StepContext


class TwoBatchMethod(Method):
    """A method whose weights come from two batches' gradients ``J₁`` (``grads``) and ``J₂``
    (``ctx.extra_grads``, which the trainer fills at the param level); subclasses implement
    :meth:`pair_weights`. The update is ``wᵀ (J₁ + J₂) / 2``; without a second batch (feature level,
    or a caller that gives one) ``J₂ = J₁``, which biases the weights' estimate."""

    batches_per_step = 2

    def pair_weights(self, first: Tensor, second: Tensor) -> Tensor:
        """The weights ``[T]`` from the two batches' ``[T, P]`` gradients (``second is first`` without
        a second batch)."""
        raise NotImplementedError

    def combine(self, grads: Tensor, ctx: StepContext | None = None) -> Tensor:
        self.check_grads(grads)
        ctx = ctx or StepContext()
        first = grads.flatten(1)
        if ctx.extra_grads is None:
            return (self.pair_weights(first, first).to(grads.dtype) @ first).view(grads.shape[1:])
        if ctx.extra_grads.shape != grads.shape:
            raise ValueError(
                f"{self.name}: ctx.extra_grads must have the shape of the gradients {tuple(grads.shape)}, "
                f"got {tuple(ctx.extra_grads.shape)}"
            )
        second = ctx.extra_grads.to(grads.dtype).flatten(1)
        half = (self.pair_weights(first, second) / 2).to(grads.dtype)
        return (half @ first + half @ second).view(grads.shape[1:])
