"""MoDo: multi-objective gradient with double sampling (Chen et al. 2023)."""

from __future__ import annotations

from torch import Tensor

from benchmark.registry import METHODS
from methods._checks import check_number
from methods._simplex import project_onto_simplex, uniform
from methods._two_batches import TwoBatchMethod


@METHODS.register("modo")
class MoDo(TwoBatchMethod):
    """MoDo, Chen et al. 2023, "Three-Way Trade-Off in Multi-Objective Learning: Optimization,
    Generalization and Conflict-Avoidance" (https://arxiv.org/abs/2305.20057), Algorithm 1 as in the
    authors' code (``heshandevaka/Trade-Off-MOL``, ``LibMTL/weighting/MoDo.py``).

    MoDo is stochastic MGDA with one projected-gradient step on the simplex weights λ (state, uniform
    at first) per step, its gradient estimated without bias from two independent batches:

        ``λ ← Π_Δ(λ − γ (J₁ J₂ᵀ λ + ρ λ))``,

    then the update is ``λᵀ (J₁ + J₂) / 2``, with the new λ. ``J₂ᵀ λ`` and ``J₁ (J₂ᵀ λ)`` are two
    matrix-vector products: no Gramian is formed. Π_Δ is the Euclidean projection onto the simplex
    (:func:`methods._simplex.project_onto_simplex`).

    Two batches per step (:class:`methods._two_batches.TwoBatchMethod`): without a second one, J₂ = J₁
    and the λ-step is the biased one of stochastic MGDA.

    Args:
        gamma: γ > 0, the step size of λ (the authors' code default 0.1; LibMTL's port uses 1e-3).
        rho: ρ ≥ 0, the ℓ2 regularisation of the λ sub-problem (authors: 0.1).

    Departures: the authors' update is ``λᵀ (J₁ + J₂)``, the sum of the two batches' gradients
    ("handle averaging via lr of x"); here it is their mean, so that the update has the scale of one
    batch's gradients (as in TorchJD's two-batch example). λ is kept in float64 and
    restarts from uniform when the device changes.
    """

    description = "Stochastic MGDA with double sampling: one projected step on the simplex weights per step"
    citation = "Chen et al. 2023, NeurIPS"
    level = "param"
    deterministic = True
    state_attributes = ("lambd",)

    def __init__(self, num_tasks: int, gamma: float = 0.1, rho: float = 0.1) -> None:
        super().__init__(num_tasks)
        self.gamma = check_number("modo", "gamma", gamma, low_open=True)
        self.rho = check_number("modo", "rho", rho)
        self.lambd: Tensor | None = None  # the simplex weights, float64 on the gradients' device

    def pair_weights(self, first: Tensor, second: Tensor) -> Tensor:
        if self.lambd is None or self.lambd.device != first.device:
            self.lambd = uniform(self.num_tasks, first.device)
        lambd = self.lambd
        descent = (first @ (lambd.to(first.dtype) @ second)).double() + self.rho * lambd  # J₁ J₂ᵀ λ + ρ λ
        self.lambd = project_onto_simplex(lambd - self.gamma * descent)
        return self.lambd
