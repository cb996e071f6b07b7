"""DB-MTL: log-transformed losses and task gradients rescaled to the largest one (Lin et al. 2023)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from benchmark.method import Method, StepContext
from benchmark.registry import METHODS
from methods._checks import check_number
from methods._losses import floored


def row_norms(matrix: Tensor) -> Tensor:
    """``‖rowᵢ‖`` ``[T]``; rows are rescaled first when a norm overflows or is small enough for its
    squares to underflow (one host sync; the rescaling costs three passes, only then)."""
    norms = torch.linalg.vector_norm(matrix, dim=1)
    finfo = torch.finfo(matrix.dtype)
    if torch.isfinite(norms).all() and (norms > math.sqrt(finfo.tiny / finfo.eps * matrix.shape[1])).all():
        return norms
    scale = torch.maximum(matrix.amax(1), -matrix.amin(1)).clamp_min(finfo.tiny)[:, None]
    return torch.linalg.vector_norm(matrix / scale, dim=1) * scale[:, 0]


def balanced_weights(norms: Tensor, largest: Tensor) -> Tensor:
    """``largest / ‖ĝᵢ‖``: the weights that give every ĝᵢ the norm ``largest``; 0 where ``ĝᵢ = 0``.
    A ratio beyond the dtype's range (norms 1e308 apart) is capped at its largest value."""
    finfo = torch.finfo(norms.dtype)
    return torch.where(norms > 0, (largest / norms.clamp_min(finfo.tiny)).clamp_max(finfo.max), 0.0)


@METHODS.register("db_mtl")
class DBMTL(Method):
    """DB-MTL, Lin et al. 2023, "Dual-Balancing for Multi-Task Learning"
    (https://arxiv.org/abs/2308.12029), Algorithm 1, as in the authors' LibMTL ``DB_MTL``.

    Loss-scale balancing: each task descends ``log Lᵢ``, whose gradient is ``gᵢ / Lᵢ``. Gradient-
    magnitude balancing: ``ĝᵢ ← βₜ ĝᵢ + (1 − βₜ) gᵢ / Lᵢ`` (an average over steps, from ``ĝ = 0``, with
    ``βₜ = β / t^σ`` at the t-th step), and the update is ``maxₖ ‖ĝₖ‖ Σᵢ ĝᵢ / ‖ĝᵢ‖``: every task's
    averaged gradient rescaled to the largest norm. The update combines the averages ĝ, not this
    step's gradients, so DB-MTL is not a weighting of them and cannot be a suite's ``weighting``.

    Args:
        beta: ``β``, the weight of the past in the average (the authors' ``DB_beta``, 0.9).
        beta_sigma: ``σ``, the decay of ``βₜ`` over steps (their ``DB_beta_sigma``, 0: constant β).

    State: the averages ``[T, P]`` (``[T]`` at the feature level), created at the first call on the
    gradients' device and dtype; every call is one step.

    Departures: the losses are floored at 1e-8 (``methods._losses.floored``; the authors add 1e-8);
    without ``ctx.losses`` the gradients are not divided. At the feature level (which the authors
    refuse) the gradients of different steps belong to different samples, so they cannot be averaged:
    there the average runs over the norms ``‖gᵢ‖ / Lᵢ`` and the update is ``maxₖ mₖ Σᵢ gᵢ / ‖gᵢ‖``
    (``mₖ`` the averaged norms), the same as the paper's for ``β = 0``.
    """

    description = "Log-transformed losses, then averaged task gradients rescaled to the largest norm"
    citation = "Lin et al. 2023, arXiv"
    level = "param"
    deterministic = True
    permutation_invariant = True
    linear_under_scaling = True
    state_attributes = ("steps", "average")

    def __init__(self, num_tasks: int, beta: float = 0.9, beta_sigma: float = 0.0) -> None:
        super().__init__(num_tasks)
        self.beta = check_number("db_mtl", "beta", beta, high=1.0, high_open=True)
        self.beta_sigma = check_number("db_mtl", "beta_sigma", beta_sigma)
        self.steps = 0  # optimisation steps seen, t
        self.average: Tensor | None = None

    def combine(self, grads: Tensor, ctx: StepContext | None = None) -> Tensor:
        self.check_grads(grads)
        ctx = ctx or StepContext()
        matrix = grads.flatten(1)
        feature = ctx.level == "feature"
        average = self._average((self.num_tasks,) if feature else tuple(matrix.shape), matrix)
        self.steps += 1
        beta = self.beta / self.steps**self.beta_sigma
        if ctx.losses is None:
            divisors = matrix.new_ones(self.num_tasks)
        else:
            divisors = floored(ctx.losses.detach().reshape(-1).to(matrix))
        if feature:
            norms = row_norms(matrix)
            average.lerp_(norms / divisors, 1 - beta)
            return (balanced_weights(norms, average.max()) @ matrix).view(grads.shape[1:])
        average.mul_(beta).addcmul_(matrix, ((1 - beta) / divisors)[:, None])
        norms = row_norms(average)
        return (balanced_weights(norms, norms.max()) @ average).view(grads.shape[1:])

    def _average(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """The averages, zeros of ``shape`` at the first call, on ``like``'s device and dtype."""
        if self.average is None:
            self.average = like.new_zeros(shape)
        if tuple(self.average.shape) != shape:
            raise ValueError(
                f"db_mtl: the gradients changed shape, averages {tuple(self.average.shape)} vs {shape}"
            )
        self.average = self.average.to(like)
        return self.average
