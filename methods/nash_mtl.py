"""Nash-MTL: multi-task learning as a bargaining game (Navon et al. 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.method import GramianMethod, StepContext
from benchmark.registry import METHODS
from methods._checks import check_integer, check_number
from methods.fairgrad import fair_weights


@METHODS.register("nash_mtl")
class NashMTL(GramianMethod):
    """Nash-MTL, Navon et al. 2022, "Multi-Task Learning as a Bargaining Game"
    (https://arxiv.org/abs/2202.01017), Algorithm 1 with the options of the authors' code
    (``AvivNavon/nash-mtl``, ``methods/weight_methods.py``).

    The update ``d = Σᵢ αᵢ gᵢ`` is the Nash bargaining solution: α > 0 solves ``G α = 1/α``
    (``G = J Jᵀ``; the paper's characterisation of the solution), so that every task gets
    ``gᵢᵀ d = 1/αᵢ > 0`` and ``‖d‖² = T`` whatever the gradients' scale. As in the authors' code, α is
    recomputed every ``update_weights_every`` calls (the calls in between reuse the last α with the
    new gradients) and the update is clipped to norm ``max_norm`` (their ``clip_grad_norm_`` of the
    shared parameters).

    Args:
        max_norm: the update's norm is clipped to this; 0 disables the clipping (authors: 1.0).
        update_weights_every: solve for α on every n-th call (authors: 1).
        optim_niter: Newton steps at most for ``G α = 1/α`` (authors: 20 convex sub-problems).

    Departures: the authors approximate ``G α = 1/α`` by up to 20 convex programs of the
    concave-convex procedure (cvxpy/ECOS, warm-started from the last α, stopped when the residual
    falls below 1e-3). That sequence can stop at points that do not solve the equation (e.g.
    ``G = [[0.0886, −3.38], [−3.38, 1775]]`` from the start α = 1: α ≈ (64.6, 0.127) where the solution
    is (3.93, 0.0278)). Here the equation is solved directly, by Newton's method on the strictly convex
    ``½ αᵀGα − Σ log αᵢ`` whose stationary point it is (:func:`methods.fairgrad.fair_weights` with
    α = 1, on G divided by its largest diagonal entry; the authors divide by its Frobenius norm, which
    gives the same α), to 1e-10. Where no solution exists (0 in the convex hull of some gradients) the
    update stays finite but is not meaningful.
    """

    description = "Nash bargaining update: solve G alpha = 1/alpha on the Gramian (Newton), clip the norm"
    citation = "Navon et al. 2022, ICML"
    level = "param"
    deterministic = True
    permutation_invariant = True
    state_attributes = ("calls", "alpha")

    def __init__(
        self, num_tasks: int, max_norm: float = 1.0, update_weights_every: int = 1, optim_niter: int = 20
    ) -> None:
        super().__init__(num_tasks)
        self.max_norm = check_number("nash_mtl", "max_norm", max_norm)
        self.update_weights_every = check_integer(
            "nash_mtl", "update_weights_every", update_weights_every, low=1
        )
        self.optim_niter = check_integer("nash_mtl", "optim_niter", optim_niter, low=1)
        self.calls = 0
        self.alpha: Tensor | None = None  # the last solution, for the raw gradients (float64)

    def gramian_weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        if self.alpha is None or self.calls % self.update_weights_every == 0:
            self.alpha = fair_weights(gramian, 1.0, self.optim_niter)
        self.calls += 1
        alpha = self.alpha.to(gramian.device)
        if self.max_norm > 0:
            norm = (alpha @ gramian.double() @ alpha).clamp_min(0).sqrt()  # ‖Σᵢ αᵢ gᵢ‖
            alpha = alpha * (self.max_norm / norm.clamp_min(torch.finfo(norm.dtype).tiny)).clamp_max(1.0)
        return alpha.to(gramian.dtype)
