"""PCGrad: projecting conflicting gradients (Yu et al. 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.method import GramianMethod, StepContext
from benchmark.registry import METHODS
from methods._gramian import scale_free


def random_task_orders(
    num_tasks: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """``[T, T - 1]`` long: row i lists the other tasks j ≠ i in a uniformly random order."""
    keys = torch.rand(num_tasks, num_tasks, generator=generator, device=device)
    keys.fill_diagonal_(2.0)  # above every draw in [0, 1): task i sorts last and is cut off
    return keys.argsort(dim=1)[:, :-1]


@torch.no_grad()
def pcgrad_weights(gramian: Tensor, orders: Tensor) -> Tensor:
    """Weights w with ``Σᵢ g_i^PC = Σₖ wₖ gₖ``, from the Gramian ``G = J Jᵀ`` alone (Algorithm 1).

    Each ``g_i^PC`` is tracked as coefficients over the original gradients, ``g_i^PC = Σₖ C[i, k] gₖ``,
    so ``g_i^PC · g_j = (C G)[i, j]``. Step s projects every ``g_i^PC`` at once on the normal plane of
    ``g_j``, ``j = orders[i, s]``, where their dot product is negative; a zero ``g_j`` is skipped.
    """
    num_tasks = gramian.shape[0]
    squared_norms = gramian.diagonal().clamp_min(torch.finfo(gramian.dtype).tiny)
    coeffs = torch.eye(num_tasks, dtype=gramian.dtype, device=gramian.device)
    rows = torch.arange(num_tasks, device=gramian.device)
    for step in range(num_tasks - 1):
        j = orders[:, step]
        dots = (coeffs * gramian[j]).sum(1)
        coeffs.index_put_((rows, j), -dots.clamp(max=0) / squared_norms[j], accumulate=True)
    return coeffs.sum(0)


@METHODS.register("pcgrad")
class PCGrad(GramianMethod):
    """PCGrad, Yu et al. 2020, "Gradient Surgery for Multi-Task Learning"
    (https://arxiv.org/abs/2001.06782), Algorithm 1.

    For each task i, ``g_i^PC`` starts at ``g_i`` and, for every other task j in a random order, is
    replaced by its projection on the normal plane of ``g_j`` when ``g_i^PC · g_j < 0``; the update is
    ``Σᵢ g_i^PC``. Every task gets its own order (``random_task_orders``, drawn from ``ctx.generator``
    on the gradients' device each step), as in the algorithm's inner loop. The projections run on the
    T x T Gramian (``pcgrad_weights``: T − 1 vectorised steps), then one weighted sum of the gradients.

    No hyperparameters. Algorithm 1 is followed where the authors' TF code differs from it: that code
    draws one order shared by all tasks and also projects against j = i.
    """

    description = "Project each task gradient off the gradients it conflicts with, in random order"
    citation = "Yu et al. 2020, NeurIPS"
    level = "param"
    linear_under_scaling = True

    def gramian_weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        orders = random_task_orders(self.num_tasks, ctx.generator, gramian.device)
        return pcgrad_weights(scale_free(gramian), orders)
