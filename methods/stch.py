"""Smooth Tchebycheff scalarisation of the log-normalised task losses."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.method import StepContext, WeightingMethod
from benchmark.registry import METHODS
from methods._checks import check_integer, check_number
from methods._losses import floored


@METHODS.register("stch")
class SmoothTchebycheff(WeightingMethod):
    """Smooth Tchebycheff scalarisation (STCH), Lin et al. 2024, "Smooth Tchebycheff Scalarization for
    Multi-Objective Optimization" (https://arxiv.org/abs/2402.19078), as in the authors' multi-task
    code (``STCH_MTL/LibMTL/weighting/STCH.py``, also LibMTL's ``STCH``).

    The paper's ``μ log Σᵢ exp((fᵢ − zᵢ*) / μ)`` is applied to ``fᵢ = log(Lᵢ / nᵢ)`` with ideal point 0,
    where the nadir ``n`` is the mean loss over epoch ``warmup_epoch``, and multiplied by T. Its gradient
    gives ``wᵢ = T sᵢ / Lᵢ`` with ``s = softmax(log(L / n) / μ)``. Up to and including epoch
    ``warmup_epoch`` (``ctx.epoch``, filled by the trainer) the objective is ``Σᵢ log Lᵢ``, i.e.
    ``wᵢ = 1 / Lᵢ``, while the nadir is recorded.

    Args:
        mu: ``μ``, the smoothing; small values approach the (non-smooth) Tchebycheff max. 1.0 as in the
            authors' MTL code.
        warmup_epoch: the epoch whose mean losses make the nadir; 4 as in the authors' code.

    Departures: losses and the nadir are clamped to ``1e-8`` (the authors add ``1e-20`` inside the log);
    if no call fell in epoch ``warmup_epoch``, the nadir is the losses of the first call after it.
    """

    description = "Smooth Tchebycheff: log-sum-exp of the nadir-normalised log-losses, after a warm-up"
    citation = "Lin et al. 2024, ICML"
    level = "param"
    deterministic = True
    permutation_invariant = True
    linear_under_scaling = True
    state_attributes = ("loss_sum", "count", "nadir")

    def __init__(self, num_tasks: int, mu: float = 1.0, warmup_epoch: int = 4) -> None:
        super().__init__(num_tasks)
        self.mu = check_number("stch", "mu", mu, low_open=True)
        self.warmup_epoch = check_integer("stch", "warmup_epoch", warmup_epoch)
        self.loss_sum: Tensor | None = None  # summed losses of epoch warmup_epoch, [T]
        self.count = 0
        self.nadir: Tensor | None = None

    def weights(self, losses: Tensor, ctx: StepContext | None = None) -> Tensor:
        epoch = (ctx or StepContext()).epoch
        losses = floored(losses.detach())
        if epoch <= self.warmup_epoch:
            if epoch == self.warmup_epoch:
                self.loss_sum = losses if self.loss_sum is None else self.loss_sum + losses
                self.count += 1
            return losses.reciprocal()
        if self.nadir is None:
            self.nadir = losses if self.loss_sum is None else self.loss_sum / self.count
        nadir = floored(self.nadir.to(device=losses.device, dtype=losses.dtype))
        shares = torch.softmax((losses.log() - nadir.log()) / self.mu, dim=0)
        return self.num_tasks * shares / losses
