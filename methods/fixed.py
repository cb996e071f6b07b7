"""Fixed loss weights: linear scalarisation with user-given weights."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from benchmark.method import StepContext, WeightingMethod
from benchmark.registry import METHODS


@METHODS.register("fixed")
class FixedWeighting(WeightingMethod):
    """Fixed loss weights: the update is ``sum_i w_i g_i``, the gradient of ``sum_i w_i L_i``.

    The tuned-scalarisation baseline that Kurin et al. 2022 ("In Defense of the Unitary Scalarization
    for Deep Multi-Task Learning") and Xin et al. 2022 found to match most multi-task optimisers.

    Args:
        weights: one finite weight per task; ``None`` (default) means ``ones(T)``, i.e. equal weighting.
    """

    description = "Fixed, user-given loss weights (tuned linear scalarisation)"
    citation = "Kurin et al. 2022, NeurIPS"
    level = "param"
    linear_under_scaling = True

    def __init__(self, num_tasks: int, weights: list[float] | None = None) -> None:
        super().__init__(num_tasks)
        values = _weight_values(weights, num_tasks)
        self.register_buffer("fixed_weights", torch.tensor(values, dtype=torch.float64), persistent=False)

    def weights(self, losses: Tensor, ctx: StepContext | None = None) -> Tensor:
        return self.fixed_weights.to(device=losses.device, dtype=losses.dtype)


def _weight_values(weights: list[float] | None, num_tasks: int) -> list[float]:
    """The weights as floats; ``ValueError`` unless there are ``num_tasks`` finite numbers."""
    if weights is None:
        return [1.0] * num_tasks
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError):
        values = []
    if len(values) != num_tasks or not all(math.isfinite(v) for v in values):
        raise ValueError(f"fixed: weights must be {num_tasks} finite numbers, got {weights!r}")
    return values
