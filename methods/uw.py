"""Uncertainty weighting: learnable homoscedastic-uncertainty loss weights."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmark.method import StepContext, WeightingMethod, accumulate_grad
from benchmark.registry import METHODS


@METHODS.register("uw")
class UncertaintyWeighting(WeightingMethod):
    """Uncertainty weighting (UW), Kendall, Gal & Cipolla 2018, "Multi-Task Learning Using Uncertainty
    to Weigh Losses for Scene Geometry and Semantics" (https://arxiv.org/abs/1705.07115), in the
    log-variance parametrisation the paper advises for stability: with learnable ``sᵢ = log σᵢ²``
    (initialised to 0), minimise ``Σᵢ ½ exp(−sᵢ) Lᵢ + ½ sᵢ``.

    ``weights`` returns ``½ exp(−s)`` (constants for the model's backward) and adds
    ``∂/∂sᵢ = ½ − ½ exp(−sᵢ) Lᵢ`` to ``s.grad``; the trainer's method optimiser then steps ``s``. At the
    optimum of ``sᵢ`` the weight is ``1 / (2 Lᵢ)``. No hyperparameters.

    Departures: every task uses the regression form ``½ exp(−s) L + ½ s`` (as LibMTL and Navon et al.'s
    code do); the paper uses ``exp(−s) L + ½ s`` for classification losses.
    """

    description = "Uncertainty weighting: learnable log-variances weigh the losses by exp(-s) / 2"
    citation = "Kendall et al. 2018, CVPR"
    level = "param"
    deterministic = True
    permutation_invariant = True
    linear_under_scaling = True

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.log_vars = nn.Parameter(torch.zeros(num_tasks))

    def weights(self, losses: Tensor, ctx: StepContext | None = None) -> Tensor:
        log_vars = self.log_vars.detach()
        scale = 0.5 * torch.exp(-log_vars)
        grad = 0.5 - scale * losses.detach().to(log_vars)
        accumulate_grad(self.log_vars, grad)
        return scale.to(device=losses.device, dtype=losses.dtype)
