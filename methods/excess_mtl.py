"""ExcessMTL: task weights raised by each task's estimated excess risk (He et al. 2024)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from benchmark.method import StepContext, WeightedMethod
from benchmark.registry import METHODS
from methods._blocks import column_blocks
from methods._checks import check_number

HESSIAN_EPS = 1e-7  # added to the summed squared gradients under the square root, as the authors do


def accumulate_excess(squares: Tensor, grads: Tensor) -> Tensor:
    """Adds ``g²`` to ``squares`` (the AdaGrad sums, in place) and returns the excess risk estimates
    ``Eᵢ = Σₚ gᵢₚ² / √(squaresᵢₚ + ε)``, ``[T]``; by column blocks on the CPU, in one block elsewhere."""
    parts = []
    for part in column_blocks(grads.shape[1], grads.device):
        g = grads[:, part]
        summed = squares[:, part].addcmul_(g, g)
        parts.append(summed.add(HESSIAN_EPS).rsqrt_().mul_(g).mul_(g).sum(1))
    return torch.stack(parts).sum(0)


@METHODS.register("excess_mtl")
class ExcessMTL(WeightedMethod):
    """ExcessMTL, He et al. 2024, "Robust Multi-Task Learning with Excess Risks"
    (https://arxiv.org/abs/2402.02009), Algorithm 1, as in the authors' LibMTL ``ExcessMTL``.

    Each step estimates task i's excess risk by its second-order Taylor expansion around the task's
    optimum, ``Eᵢ = gᵢᵀ Hᵢ⁻¹ gᵢ``, with the diagonal AdaGrad approximation ``Hᵢ = diag(√(Σₛ gᵢ,ₛ² + ε))``
    of the Hessian (``Σₛ`` over all steps so far, this one included; ε = 1e-7; the expansion's ½
    cancels in the scale processing). The first estimate of
    each task is its scale (the paper's scale processing): later ones are divided by it. The weights
    then take an exponentiated-gradient step, ``wᵢ ← wᵢ exp(η Eᵢ / Eᵢ⁽⁰⁾)``, renormalised to
    ``Σ wᵢ = T``; the update is ``Σᵢ wᵢ gᵢ``. At the first step the weights stay 1, as in the authors'
    code (the estimates only set the scales).

    Args:
        robust_step_size: ``η``, the step size of the weights (the authors' ``robust_step_size``, 1e-2).

    State: the summed squared gradients ``[T, P]``, the scales and the log-weights, created at the first
    call on the gradients' device; every call is one step. At the feature level the gradients are
    summed over the batch first, as the authors do for representation gradients, so the state is
    ``[T, features]``.

    Departures: a task whose first estimate is 0 (a zero gradient) takes its scale from its first
    non-zero estimate, and its weight does not move until then (the authors divide by 0); the weights
    live in log space (``wᵢ = T softmax(log-weights)``), which is the same update without overflow.
    """

    description = "Task weights raised by each task's excess risk, estimated with a diagonal Hessian"
    citation = "He et al. 2024, ICML"
    level = "param"
    deterministic = True
    permutation_invariant = True
    state_attributes = ("state",)

    def __init__(self, num_tasks: int, robust_step_size: float = 1e-2) -> None:
        super().__init__(num_tasks)
        self.robust_step_size = check_number(
            "excess_mtl", "robust_step_size", robust_step_size, low_open=True
        )
        self.state: tuple[Tensor, Tensor, Tensor] | None = None  # (Σ g², scales, log-weights)

    def task_weights(self, grads: Tensor, ctx: StepContext) -> Tensor:
        if ctx.level == "feature" and grads.dim() > 2:
            grads = grads.sum(1)
        matrix = grads.reshape(self.num_tasks, -1)
        squares, scales, logits = self._state(matrix)
        excess = accumulate_excess(squares, matrix).double()  # gᵢᵀ Hᵢ⁻¹ gᵢ
        known = scales > 0
        ratios = torch.where(known, excess / scales.clamp_min(torch.finfo(scales.dtype).tiny), 0.0)
        increment = torch.nan_to_num(self.robust_step_size * ratios, posinf=torch.finfo(ratios.dtype).max)
        logits = torch.log_softmax(logits + increment, dim=0)
        scales = torch.where(known, scales, excess)
        self.state = (squares, scales, logits)
        return (self.num_tasks * logits.exp()).to(device=grads.device)

    def _state(self, matrix: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The state; at the first call zeros, no scales and equal weights."""
        if self.state is None:
            small = matrix.new_zeros(self.num_tasks, dtype=torch.float64)
            self.state = (torch.zeros_like(matrix), small, small - math.log(self.num_tasks))
        if self.state[0].shape != matrix.shape:
            raise ValueError(
                f"excess_mtl: the gradients changed shape, state {tuple(self.state[0].shape)} "
                f"vs {tuple(matrix.shape)}"
            )
        return self.state
