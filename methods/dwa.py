"""Dynamic weight average: weights from the rate of change of the epoch-average losses."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.method import StepContext, WeightingMethod
from benchmark.registry import METHODS
from methods._checks import check_number
from methods._losses import floored


@METHODS.register("dwa")
class DynamicWeightAverage(WeightingMethod):
    """Dynamic weight average (DWA), Liu, Johns & Davison 2019, "End-to-End Multi-Task Learning with
    Attention" (https://arxiv.org/abs/1803.10704), in epoch ``t``:
    ``wₖ(t) = K exp(rₖ(t−1) / T) / Σᵢ exp(rᵢ(t−1) / T)`` with ``rₖ(t−1) = L̄ₖ(t−1) / L̄ₖ(t−2)``, where
    ``L̄ₖ`` is task k's loss averaged over an epoch; ``wₖ = 1`` in the first two epochs.

    Stateful: each call adds its losses to the average of epoch ``ctx.epoch`` (the trainer sets it to
    ``step // steps_per_epoch``); when the epoch changes, that average is kept as the latest one.

    Args:
        temperature: ``T``, the softness of the weights (paper: 2).

    Departures: the ratio uses the two most recent epochs that had a call, and the weights stay 1 until
    two such epochs have ended (the same thing when every epoch trains); the denominator average is
    clamped to ``1e-8``.
    """

    description = "Dynamic weight average: softmax of the epoch-to-epoch loss ratios"
    citation = "Liu et al. 2019, CVPR"
    level = "param"
    deterministic = True
    permutation_invariant = True
    linear_under_scaling = True
    state_attributes = ("epoch", "loss_sum", "count", "history")

    def __init__(self, num_tasks: int, temperature: float = 2.0) -> None:
        super().__init__(num_tasks)
        self.temperature = check_number("dwa", "temperature", temperature, low_open=True)
        self.epoch: int | None = None  # the epoch being averaged
        self.loss_sum: Tensor | None = None  # its summed losses, [T]
        self.count = 0  # and how many calls added to them
        self.history: list[Tensor] = []  # average losses of the last two finished epochs, oldest first

    def weights(self, losses: Tensor, ctx: StepContext | None = None) -> Tensor:
        epoch = (ctx or StepContext()).epoch
        if epoch != self.epoch:
            self._end_epoch(epoch)
        self.loss_sum = losses.detach() if self.loss_sum is None else self.loss_sum + losses.detach()
        self.count += 1
        if len(self.history) < 2:
            return losses.new_ones(self.num_tasks)
        older, latest = (h.to(device=losses.device, dtype=losses.dtype) for h in self.history)
        ratios = latest / floored(older)
        return self.num_tasks * torch.softmax(ratios / self.temperature, dim=0)

    def _end_epoch(self, epoch: int) -> None:
        """Keep the finished epoch's average (if any call added to it) and start averaging ``epoch``."""
        if self.loss_sum is not None:
            self.history = [*self.history, self.loss_sum / self.count][-2:]
        self.epoch, self.loss_sum, self.count = epoch, None, 0
