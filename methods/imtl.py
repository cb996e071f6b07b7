"""IMTL: impartial multi-task learning by gradient (IMTL-G) and loss (IMTL-L) balance (Liu et al. 2021)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmark.method import Composed, GramianMethod, StepContext, WeightingMethod, accumulate_grad
from benchmark.registry import METHODS
from methods._gramian import scale_free


def imtl_g_weights(gramian: Tensor) -> Tensor:
    """α with ``Σ α = 1`` and equal projections of ``Jᵀ α`` on every unit gradient, from the Gramian.

    Equal projections ``uᵢ · Jᵀ α = c`` read ``G α = c d`` with ``d = (‖gᵢ‖)``, so ``α ∝ G⁺ d``. The
    pseudo-inverse (eigenvalues up to ``λ_max T eps`` cut, eps of the Gramian's dtype) extends this to
    linearly dependent gradients as TorchJD's ``IMTLG`` does. When ``Σ G⁺ d`` vanishes against
    ``T eps Σ |G⁺ d|`` (e.g. g and −g) the weights are 0.
    """
    num_tasks = len(gramian)
    eps = torch.finfo(gramian.dtype).eps
    matrix = gramian.to(torch.float64)
    norms = matrix.diagonal().clamp_min(0).sqrt()
    raw = torch.linalg.pinv(matrix, rtol=num_tasks * eps, hermitian=True) @ norms
    total = raw.sum()
    degenerate = total.abs() <= num_tasks * eps * raw.abs().sum()
    weights = torch.where(degenerate, 0.0, raw / torch.where(degenerate, 1.0, total))
    return weights.to(gramian.dtype)


@METHODS.register("imtl_g")
class IMTLG(GramianMethod):
    """IMTL-G, Liu et al. 2021, "Towards Impartial Multi-task Learning" (ICLR,
    https://openreview.net/forum?id=IMPnRXEWpvr): the update ``Σᵢ αᵢ gᵢ`` with ``Σ αᵢ = 1``
    whose projections on the unit task gradients are all equal. The paper's closed form (via differences
    to the first task) is equivalent to ``α ∝ G⁺ d`` on the Gramian (:func:`imtl_g_weights`),
    which also covers T = 1, zero gradients and linearly dependent ones.

    No hyperparameters. The paper balances the gradients w.r.t. the shared feature z (as MGDA-UB does;
    re-implementations such as Kurin et al.'s default to it), so the default level is ``feature``; at
    the ``param`` level this is IMTL-G on the gradients of the shared parameters.

    Departures: the paper's inverse of ``D Uᵀ`` fails on linearly dependent gradients (re-implementations
    add 1e-8 I when it does); the pseudo-inverse generalisation is TorchJD's (Quinton & Rey 2024).
    """

    description = "Update with equal projections on every unit task gradient (closed form from the Gramian)"
    citation = "Liu et al. 2021, ICLR"
    level = "feature"
    deterministic = True
    permutation_invariant = True
    linear_under_scaling = True

    def gramian_weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        return imtl_g_weights(scale_free(gramian))


@METHODS.register("imtl_l")
class IMTLL(WeightingMethod):
    """IMTL-L, Liu et al. 2021, "Towards Impartial Multi-task Learning" (ICLR,
    https://openreview.net/forum?id=IMPnRXEWpvr): learnable scales ``sᵢ`` (initialised to 0)
    and the loss ``Σᵢ exp(sᵢ) Lᵢ − sᵢ``, whose optimum in s makes every scaled loss ``exp(sᵢ) Lᵢ = 1``.

    ``weights`` returns ``exp(s)`` (constants for the model's backward) and adds
    ``∂/∂sᵢ = exp(sᵢ) Lᵢ − 1`` to ``s.grad``; the trainer's method optimiser steps s. No hyperparameters.
    """

    description = "Learnable loss scales exp(s) with loss exp(s) L - s: balances the scaled losses at 1"
    citation = "Liu et al. 2021, ICLR"
    level = "param"
    deterministic = True
    permutation_invariant = True
    linear_under_scaling = True

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.scales = nn.Parameter(torch.zeros(num_tasks))

    def weights(self, losses: Tensor, ctx: StepContext | None = None) -> Tensor:
        factors = torch.exp(self.scales.detach())
        grad = factors * losses.detach().to(factors) - 1
        accumulate_grad(self.scales, grad)
        return factors.to(device=losses.device, dtype=losses.dtype)


@METHODS.register("imtl")
class IMTL(Composed):
    """IMTL, Liu et al. 2021, "Towards Impartial Multi-task Learning" (ICLR,
    https://openreview.net/forum?id=IMPnRXEWpvr): the hybrid of loss and gradient balance,
    IMTL-L's learnable scales ``exp(sᵢ)`` (:class:`IMTLL`) applied to the losses, then IMTL-G
    (:class:`IMTLG`) on the gradients of the scaled losses ``exp(sᵢ) gᵢ``. The two parts are the
    registered ``imtl_l`` and ``imtl_g``, composed as a weighting before a method (``Composed`` hands
    IMTL-G the scaled Gramian ``D G D``, ``D = diag(exp(s))``, without scaling a copy of the gradients).

    No hyperparameters. Level ``feature``, as IMTL-G.
    """

    description = "IMTL-L learnable loss scales, then IMTL-G on the scaled gradients (the paper's hybrid)"
    citation = "Liu et al. 2021, ICLR"
    level = "feature"
    deterministic = True
    permutation_invariant = True
    linear_under_scaling = True

    def __init__(self, num_tasks: int) -> None:
        super().__init__(IMTLL(num_tasks), IMTLG(num_tasks))
