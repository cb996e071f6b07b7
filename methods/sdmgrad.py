"""SDMGrad: stochastic direction-oriented multi-objective gradient descent (Xiao et al. 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.registry import METHODS
from methods._checks import check_integer, check_number
from methods._simplex import project_onto_simplex, uniform
from methods._two_batches import TwoBatchMethod


@torch.no_grad()
def direction_oriented_weights(
    cross: Tensor, w: Tensor, lamda: float, niter: int, lr: float, momentum: float
) -> Tensor:
    """``niter`` steps of projected SGD with heavy-ball momentum on ``½ ‖Jᵀ w + λ g₀‖²`` over the simplex,
    from ``w`` (paper Algorithm 1, the inner loop): the gradient ``J (Jᵀ w + λ Jᵀ 1/T)`` is estimated
    by ``A (w + λ 1/T)`` with ``A = J₁ J₂ᵀ`` (``cross``) from two independent batches. The momentum
    buffer starts at 0 on every call, like the fresh ``torch.optim.SGD`` of the authors' code.
    """
    drift = lamda * cross.mean(1)  # λ A 1/T
    velocity = torch.zeros_like(w)
    for _ in range(niter):
        velocity = momentum * velocity + cross @ w + drift
        w = project_onto_simplex(w - lr * velocity)
    return w


@METHODS.register("sdmgrad")
class SDMGrad(TwoBatchMethod):
    """SDMGrad, Xiao et al. 2023, "Direction-oriented Multi-objective Learning: Simple and Provable
    Stochastic Algorithms" (https://arxiv.org/abs/2305.18409), Algorithm 1 with the options of the
    authors' code (``OptMN-Lab/sdmgrad``, ``methods/weight_methods.py``).

    The update is ``d = T (J w + λ g₀) / (1 + λ)``, between MGDA's ``J w`` and the mean gradient
    ``g₀``: the simplex weights w (state, uniform at first) take ``niter`` projected momentum-SGD steps on
    ``min_w ½ ‖Jᵀ w + λ g₀‖²``, whose gradient ``J (Jᵀ w + λ g₀)`` is estimated without bias from two
    independent batches, ``A = J₁ J₂ᵀ`` (:func:`direction_oriented_weights`). A is first divided by the
    squared mean of ``√(A_ii)`` (the authors' scale normalisation). The factor T is the authors' ("to
    match the sum loss").

    Two batches per step (:class:`methods._two_batches.TwoBatchMethod`): without a second one, J₂ = J₁,
    which makes the w-steps' gradient estimate biased.

    Args:
        lamda: λ ≥ 0, the pull towards the mean gradient (paper experiments and LibMTL: 0.3; the
            authors' class default 0.6).
        niter: projected SGD steps on w per call (authors: 20).
        lr: their step size (authors' code: 10; LibMTL: 5).
        momentum: their heavy-ball momentum (authors: 0.5).

    Departures: the authors estimate the update on a third batch ζ; here the update uses the mean of
    the two batches, ``(J₁ + J₂)/2``. Their ``+1e-4`` inside the scale's square root is replaced by
    clamping negative ``A_ii`` at 0 (as LibMTL). Their trainer clips the shared gradient to norm 1: use
    the trainer's ``clip_grad_norm: 1.0`` for that. w is kept in float64 and restarts from uniform when
    the device changes.
    """

    description = "Direction-oriented MGDA: stochastic simplex weights pulled towards the mean gradient"
    citation = "Xiao et al. 2023, NeurIPS"
    level = "param"
    deterministic = True
    state_attributes = ("w",)

    def __init__(
        self, num_tasks: int, lamda: float = 0.3, niter: int = 20, lr: float = 10.0, momentum: float = 0.5
    ) -> None:
        super().__init__(num_tasks)
        self.lamda = check_number("sdmgrad", "lamda", lamda)
        self.niter = check_integer("sdmgrad", "niter", niter, low=1)
        self.lr = check_number("sdmgrad", "lr", lr, low_open=True)
        self.momentum = check_number("sdmgrad", "momentum", momentum, high=1.0, high_open=True)
        self.w: Tensor | None = None  # the simplex weights, float64 on the gradients' device

    def pair_weights(self, first: Tensor, second: Tensor) -> Tensor:
        cross = (first @ second.T).double()
        scale = cross.diagonal().clamp_min(0).sqrt().mean() ** 2
        scale = torch.where(scale > 0, scale, cross.abs().max()).clamp_min(torch.finfo(cross.dtype).tiny)
        if self.w is None or self.w.device != first.device:
            self.w = uniform(self.num_tasks, first.device)
        self.w = direction_oriented_weights(
            cross / scale, self.w, self.lamda, self.niter, self.lr, self.momentum
        )
        return (self.w + self.lamda / self.num_tasks) * (self.num_tasks / (1 + self.lamda))
