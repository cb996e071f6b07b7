"""UPGrad and DualProj: projections onto the dual cone of the gradients (Quinton & Rey 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.method import GramianMethod, StepContext
from benchmark.registry import METHODS
from methods._checks import check_number, task_vector
from methods._dual_cone import project_weights


class _DualConeMethod(GramianMethod):
    """UPGrad and DualProj: preferences p (``pref_vector``, default ``1/T`` each) and a ridge
    ``reg_eps``; subclasses say which targets u are projected (``v ≥ u``) and how to sum them."""

    level = "param"
    deterministic = True
    permutation_invariant = True
    linear_under_scaling = True
    non_conflicting = True

    def __init__(self, num_tasks: int, pref_vector: list[float] | None = None, reg_eps: float = 0.0) -> None:
        super().__init__(num_tasks)
        preferences = task_vector(self.name, "pref_vector", pref_vector, num_tasks, 1 / num_tasks)
        self.register_buffer("preferences", preferences, persistent=False)
        self.reg_eps = check_number(self.name, "reg_eps", reg_eps)


@METHODS.register("upgrad")
class UPGrad(_DualConeMethod):
    """UPGrad, Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization"
    (https://arxiv.org/abs/2406.16232): the update is ``Σᵢ pᵢ π(gᵢ)``, with π the projection onto the
    dual cone ``{x : J x ≥ 0}`` of the gradients. By Proposition 1, ``π(pᵢ gᵢ) = Jᵀ vᵢ`` with
    ``vᵢ = argmin vᵀ G v`` subject to ``v ≥ pᵢ eᵢ``; the T quadratic programs are solved together
    (``methods._dual_cone.project_weights``), and the weights are ``Σᵢ vᵢ``. The update conflicts with
    no gradient (up to rounding).

    Args:
        pref_vector: the task preferences p; ``None`` (default) means ``1/T`` each (the paper's mean).
        reg_eps: a ridge ``ε I`` added to the Gramian divided by its trace before solving; 0 (default)
            is the paper's exact projection. TorchJD adds ``1e-4 I``: ``reg_eps=1e-4`` reproduces its
            ``UPGrad`` (to about 1e-12 in float64), at the price of conflicts of order ε ‖J‖_F².

    Departures: TorchJD's ridge (above), and its ``norm_eps``: it replaces a Gramian of trace below
    1e-4 by zero, so that small gradients get the preference-weighted sum instead of their projections;
    here the weights do not depend on the scale of J. TorchJD solves each program with quadprog; the
    batched pivoting solver here gives the same solution.
    """

    description = "Average of each task gradient projected onto the dual cone of all gradients"
    citation = "Quinton & Rey 2024, arXiv"

    def gramian_weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        targets = torch.diag(self.preferences.to(gramian.device))
        return project_weights(gramian, targets, self.reg_eps).sum(0).to(gramian.dtype)


@METHODS.register("dualproj")
class DualProj(_DualConeMethod):
    """DualProj, Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization"
    (https://arxiv.org/abs/2406.16232): the preference-weighted mean of the gradients, ``Jᵀ p``,
    projected onto the dual cone ``{x : J x ≥ 0}`` of the gradients (Gradient Episodic Memory's
    projection, Lopez-Paz & Ranzato 2017, Eq. 11). The weights are ``argmin vᵀ G v`` subject to
    ``v ≥ p`` (Proposition 1), solved like UPGrad's programs. The update conflicts with no gradient
    (up to rounding).

    Args:
        pref_vector: the preferences p; ``None`` (default) means ``1/T`` each (the mean).
        reg_eps: as for UPGrad: 0 (default) is the exact projection, 1e-4 reproduces TorchJD.

    Departures: as for UPGrad, no ``norm_eps`` threshold on the trace, and a batched pivoting solver
    in place of quadprog.
    """

    description = "Mean gradient projected onto the dual cone of the task gradients"
    citation = "Quinton & Rey 2024, arXiv"

    def gramian_weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        targets = self.preferences.to(gramian.device)[None, :]
        return project_weights(gramian, targets, self.reg_eps)[0].to(gramian.dtype)
