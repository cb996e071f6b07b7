"""MoDo: multi-objective gradient with double sampling (Chen et al. 2023)."""

from __future__ import annotations

import math

from torch import Tensor

from benchmark.method import Method, StepContext
from benchmark.registry import METHODS
from methods._simplex import project_onto_simplex, uniform


@METHODS.register("modo")
class MoDo(Method):
    """MoDo, Chen et al. 2023, "Three-Way Trade-Off in Multi-Objective Learning: Optimization,
    Generalization and Conflict-Avoidance" (https://arxiv.org/abs/2305.20057), Algorithm 1 as in the
    authors' code (``heshandevaka/Trade-Off-MOL``, ``LibMTL/weighting/MoDo.py``).

    MoDo is stochastic MGDA with one projected-gradient step on the simplex weights λ (state, uniform
    at first) per step, its gradient estimated without bias from two independent batches:

        ``λ ← Π_Δ(λ − γ (J₁ J₂ᵀ λ + ρ λ))``,

    then the update is ``λᵀ (J₁ + J₂) / 2``, with the new λ. ``J₂ᵀ λ`` and ``J₁ (J₂ᵀ λ)`` are two
    matrix-vector products: no Gramian is formed. Π_Δ is the Euclidean projection onto the simplex
    (:func:`methods._simplex.project_onto_simplex`).

    The method asks for two batches per step (``batches_per_step = 2``): J₁ is ``grads`` and J₂ is
    ``ctx.extra_grads``; without ``ctx.extra_grads`` (feature level, or a caller that gives one batch)
    J₂ = J₁ and the λ-step is the biased one of stochastic MGDA.

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
    batches_per_step = 2

    def __init__(self, num_tasks: int, gamma: float = 0.1, rho: float = 0.1) -> None:
        super().__init__(num_tasks)
        if not (isinstance(gamma, int | float) and math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"modo: gamma must be a finite number > 0, got {gamma!r}")
        if not (isinstance(rho, int | float) and math.isfinite(rho) and rho >= 0):
            raise ValueError(f"modo: rho must be a finite number >= 0, got {rho!r}")
        self.gamma = float(gamma)
        self.rho = float(rho)
        self.lambd: Tensor | None = None  # the simplex weights, float64 on the gradients' device

    def combine(self, grads: Tensor, ctx: StepContext | None = None) -> Tensor:
        self.check_grads(grads)
        ctx = ctx or StepContext()
        first = grads.flatten(1)
        second = first if ctx.extra_grads is None else _second_batch(grads, ctx.extra_grads).flatten(1)
        if self.lambd is None or self.lambd.device != grads.device:
            self.lambd = uniform(self.num_tasks, grads.device)
        lambd = self.lambd
        descent = (first @ (lambd.to(grads.dtype) @ second)).double() + self.rho * lambd  # J₁ J₂ᵀ λ + ρ λ
        self.lambd = project_onto_simplex(lambd - self.gamma * descent)
        if second is first:
            return (self.lambd.to(grads.dtype) @ first).view(grads.shape[1:])
        half = (self.lambd / 2).to(grads.dtype)
        return (half @ first + half @ second).view(grads.shape[1:])


def _second_batch(grads: Tensor, extra: Tensor) -> Tensor:
    """``ctx.extra_grads``, checked to be gradients like ``grads``."""
    if extra.shape != grads.shape:
        raise ValueError(
            f"modo: ctx.extra_grads must have the shape of the gradients {tuple(grads.shape)}, "
            f"got {tuple(extra.shape)}"
        )
    return extra.to(grads.dtype)
