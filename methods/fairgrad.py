"""FairGrad: fair resource allocation in multi-task learning (Ban & Ji 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.method import GramianMethod, StepContext
from benchmark.registry import METHODS
from methods._checks import check_integer, check_number

_CHECK_EVERY = 5  # Newton steps between two convergence tests (each one is a host sync on GPU)
_TOLERANCE = 1e-10  # converged once every |(G w)ᵢ − wᵢ^(−1/α)| is below this fraction of wᵢ^(−1/α)
_LOWEST, _HIGHEST = 1e-12, 1e12  # bounds on the scale-free weights: no solution exists where 0 is in the hull


@torch.no_grad()
def fair_weights(gramian: Tensor, alpha: float, max_iter: int = 100) -> Tensor:
    """w > 0 with ``(G w)ᵢ = wᵢ^(−1/α)`` for every task (FairGrad eq. (4); α = 1 is Nash-MTL's
    ``G α = 1/α``), for the raw gradients whose Gramian is ``gramian``; computed in float64.

    The equation is the stationarity condition of the strictly convex
    ``f(w) = ½ wᵀ G w − Σᵢ h(wᵢ)``, ``h' = w^(−1/α)``, minimised by Newton's method on the Gramian
    divided by its largest diagonal entry s (the solution for G is ``s^(−α/(1+α))`` times the one for
    G / s). The start is the solution for orthogonal gradients, ``wᵢ = Gᵢᵢ^(−α/(1+α))``, scaled along
    its ray to the minimum of f; each step goes to the Newton point or 99% of the way to the boundary
    w = 0. It stops after ``max_iter`` steps or once the equation holds to 1e-10 (relative), tested every
    5 steps. Where no solution exists (0 in the convex hull of some of the gradients: zero, opposite or
    dependent gradients) f has no minimum; the weights along the offending directions then grow up to
    1e12 (scale-free) and the update stays finite. An all-zero Gramian gives zero weights.
    """
    exponent = 1.0 / alpha  # p in G w = w^(−p)
    work = gramian.detach().double()
    scale = work.diagonal().max()
    normalized = work / scale.clamp_min(torch.finfo(work.dtype).tiny)
    w = normalized.diagonal().clamp_min(_LOWEST).pow(-1 / (1 + exponent))
    curvature = (w @ normalized @ w).clamp_min(torch.finfo(work.dtype).tiny)
    w = w * ((w.pow(1 - exponent).sum() / curvature).pow(1 / (1 + exponent))).clamp(_LOWEST, _HIGHEST)
    for step in range(max_iter):
        target = w.pow(-exponent)
        residual = normalized @ w - target
        converged = (residual.abs() <= _TOLERANCE * target) | (w >= _HIGHEST)  # at the bound: no solution
        if step % _CHECK_EVERY == _CHECK_EVERY - 1 and converged.all():
            break
        hessian = normalized + torch.diag(exponent * target / w)
        newton = torch.linalg.solve_ex(hessian, residual)[0].nan_to_num(0.0, 0.0, 0.0)
        limit = (w / newton.clamp_min(torch.finfo(work.dtype).tiny)).min()  # where w − a·newton hits 0
        w = (w - (0.99 * limit).clamp_max(1.0) * newton).clamp(_LOWEST, _HIGHEST)
    weights = w * scale.clamp_min(torch.finfo(work.dtype).tiny).pow(-1 / (1 + exponent))
    zero = scale <= torch.finfo(gramian.dtype).tiny
    return torch.where(zero, torch.zeros_like(weights), weights)


@METHODS.register("fairgrad")
class FairGrad(GramianMethod):
    """FairGrad, Ban & Ji 2024, "Fair Resource Allocation in Multi-Task Learning"
    (https://arxiv.org/abs/2402.15638), Algorithm 1: the update ``d = Σᵢ wᵢ gᵢ`` maximises the
    α-fair utility ``Σᵢ (gᵢᵀ d)^(1−α) / (1−α)`` (log for α = 1) over a ball, which gives
    ``(G w)ᵢ = wᵢ^(−1/α)`` (eq. (4)); w is found by :func:`fair_weights` (Newton on the Gramian).
    α = 1 is proportional fairness, the Nash bargaining solution of Nash-MTL; α → ∞ tends to max-min
    fairness. Every task then improves: ``gᵢᵀ d = wᵢ^(−1/α) > 0`` wherever a solution exists.

    Args:
        alpha: the fairness parameter α > 0 (the authors' class default 1.0; their CelebA script uses
            2.0).
        max_iter: Newton steps at most (α = 1 converges in about 10).

    Departures: the authors solve the equation with ``scipy.optimize.least_squares`` from w = 1/T
    (default tolerances), multiply the update by T ("to match the sum loss", inherited from their
    CAGrad code) and clip the shared gradient to norm 1 in their training loop. Here the update is the
    paper's ``Σᵢ wᵢ gᵢ`` (for α = 1 its norm is √T whatever the gradients' scale); use the trainer's
    ``clip_grad_norm: 1.0`` for the authors' clipping.
    """

    description = "Alpha-fair update: solve (G w)_i = w_i^(-1/alpha) on the Gramian (Newton)"
    citation = "Ban & Ji 2024, ICML"
    level = "param"
    deterministic = True
    permutation_invariant = True

    def __init__(self, num_tasks: int, alpha: float = 1.0, max_iter: int = 100) -> None:
        super().__init__(num_tasks)
        self.alpha = check_number("fairgrad", "alpha", alpha, low_open=True)
        self.max_iter = check_integer("fairgrad", "max_iter", max_iter, low=1)

    def gramian_weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        return fair_weights(gramian, self.alpha, self.max_iter).to(gramian.dtype)
