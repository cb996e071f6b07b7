"""GradVac: gradient vaccine, adaptive gradient-similarity targets (Wang et al. 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.method import GramianMethod, StepContext
from benchmark.registry import METHODS
from methods._checks import check_number
from methods._gramian import scale_free
from methods.pcgrad import random_task_orders


@torch.no_grad()
def gradvac_weights(
    gramian: Tensor, targets: Tensor, orders: Tensor, beta: float, eps: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """Weights w with ``Σᵢ g_i^GV = Σₖ wₖ gₖ`` and the updated targets φ̂, from the Gramian alone.

    As in PCGrad (:func:`methods.pcgrad.pcgrad_weights`), each ``g_i^GV`` is tracked as coefficients
    over the original gradients, ``g_i^GV = Σₖ C[i, k] gₖ``, through ``C G`` (so ``g_i^GV · g_j =
    (C G)[i, j]``) and ``‖g_i^GV‖²``. Step s visits, for every task i at once, ``j = orders[i, s]``: with
    ``φ = cos(g_i^GV, g_j)`` and ``φ̂ = targets[i, j]``, if ``φ < φ̂`` then (paper Algorithm 1)

        ``g_i^GV += ‖g_i^GV‖ (φ̂ √(1 − φ²) − φ √(1 − φ̂²)) / (‖g_j‖ √(1 − φ̂²)) g_j``,

    and ``φ̂ ← (1 − β) φ̂ + β φ`` for every visited pair. With ``a = g_i^GV · g_j / ‖g_j‖`` the numerator
    is ``φ̂ √(‖g_i^GV‖² − a²) − a √(1 − φ̂²)``, ``‖g_j‖ ‖g_i^GV‖ sin(θ − θ̂)`` for the angles of φ and φ̂:
    it is positive exactly when ``φ < φ̂``, so the condition is a clamp at 0. ``eps`` guards the
    denominators. What does not change along the steps is gathered in the order of the visits first,
    and the cosines are computed after the loop.
    """
    num_tasks = gramian.shape[0]
    squared_norms = gramian.diagonal().clamp_min(0)
    if num_tasks == 1:  # nothing to visit
        return torch.ones_like(squared_norms), targets
    goal = targets.gather(1, orders)  # φ̂ of each visit, [T, T − 1]
    slack = (1 - goal**2).clamp_min(0).sqrt()  # √(1 − φ̂²)
    other = squared_norms.sqrt()[orders]  # ‖g_j‖ of each visit
    columns = zip(  # [T, 1] columns, one per step
        *(part.split(1, dim=1) for part in (orders, goal, slack, other + eps, other * slack + eps)),
        (squared_norms[orders] / 2).split(1, dim=1),
        gramian[orders].unbind(1),  # the row G[j] of each visit, [T, T]
        strict=True,
    )
    products = gramian.clone()  # C G
    squared = [squared_norms[:, None]]  # ‖g_i^GV‖² before each visit
    dots, lifts = [], []
    for j, target, room, norm_j, denominator, half_squared_j, row in columns:
        dot = products.gather(1, j)  # g_i^GV · g_j
        along = dot / norm_j
        lift = torch.addcmul(squared[-1], along, along, value=-1).clamp_min(0).sqrt() * target
        lift = torch.addcmul(lift, along, room, value=-1).clamp_min(0) / denominator
        # ‖g + a g_j‖² = ‖g‖² + 2a (g · g_j + a ‖g_j‖²/2)
        squared.append(torch.addcmul(squared[-1], lift, torch.addcmul(dot, lift, half_squared_j), value=2))
        products.addcmul_(lift, row)
        dots.append(dot)
        lifts.append(lift)
    weights = torch.ones_like(squared_norms).scatter_add(0, orders.flatten(), torch.cat(lifts, 1).flatten())
    cosines = torch.cat(dots, 1) / (torch.cat(squared[:-1], 1).clamp_min(0).sqrt() * other + eps)
    visited = ~torch.eye(num_tasks, dtype=torch.bool, device=gramian.device)
    updated = (1 - beta) * targets + beta * targets.scatter(1, orders, cosines)
    return weights, torch.where(visited, updated, targets)


@METHODS.register("gradvac")
class GradVac(GramianMethod):
    """GradVac, Wang et al. 2021, "Gradient Vaccine: Investigating and Improving Multi-task Optimization
    in Massively Multilingual Models" (https://arxiv.org/abs/2010.05874), Algorithm 1 at the
    ``whole_model`` granularity.

    Like PCGrad, each task's gradient is corrected against every other task's, in a random order drawn
    per task and per step from ``ctx.generator`` (:func:`methods.pcgrad.random_task_orders`); but instead
    of projecting out conflicts (cosine < 0) it lifts the cosine up to a target ``φ̂ᵢⱼ``, an EMA of the
    cosines seen so far (state, starting at 0: the first step is exactly PCGrad). The update is
    ``Σᵢ g_i^GV``, computed from the Gramian (:func:`gradvac_weights`: T − 1 vectorised steps).

    Args:
        beta: the EMA rate β of the targets, ``φ̂ ← (1 − β) φ̂ + β φ`` (default 0.5, as in LibMTL and
            TorchJD).
        eps: guards the denominators, relative to the largest gradient norm (LibMTL and TorchJD: 1e-8 on
            the raw gradients).

    Departures: the targets are updated for every visited pair, as in the paper's Algorithm 1 and in
    TorchJD (LibMTL updates them only when a correction happens, so they can only decrease). The
    per-layer granularities of the paper are not implemented (the parameter-level gradients are one
    vector). The targets restart at 0 when the device or dtype of the gradients changes.
    """

    description = "Lift each pair's gradient cosine to an EMA target (PCGrad generalised), random order"
    citation = "Wang et al. 2021, ICLR"
    level = "param"
    state_attributes = ("targets",)

    def __init__(self, num_tasks: int, beta: float = 0.5, eps: float = 1e-8) -> None:
        super().__init__(num_tasks)
        self.beta = check_number("gradvac", "beta", beta, high=1.0)
        self.eps = check_number("gradvac", "eps", eps, low_open=True)
        self.targets: Tensor | None = None  # φ̂ [T, T], on the gradients' device and dtype

    def gramian_weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        gramian = scale_free(gramian)
        targets = self.targets
        if targets is None or targets.device != gramian.device or targets.dtype != gramian.dtype:
            targets = torch.zeros_like(gramian)
        orders = random_task_orders(self.num_tasks, ctx.generator, gramian.device)
        weights, self.targets = gradvac_weights(gramian, targets, orders, self.beta, self.eps)
        return weights
