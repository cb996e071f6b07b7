"""Fixed loss weights: linear scalarisation with user-given weights."""

from __future__ import annotations

from torch import Tensor

from benchmark.method import StepContext, WeightingMethod
from benchmark.registry import METHODS
from methods._checks import task_vector


@METHODS.register("fixed")
class FixedWeighting(WeightingMethod):
    """Fixed loss weights: the update is ``sum_i w_i g_i``, the gradient of ``sum_i w_i L_i``.

    The tuned-scalarisation baseline that Kurin et al. 2022 ("In Defense of the Unitary Scalarization
    for Deep Multi-Task Learning") and Xin et al. 2022 found to match most multi-task optimisers.

    Args:
        weights: one finite weight per task, or one number for all; ``None`` (default) means ``ones(T)``,
            i.e. equal weighting.
    """

    description = "Fixed, user-given loss weights (tuned linear scalarisation)"
    citation = "Kurin et al. 2022, NeurIPS"
    level = "param"
    deterministic = True
    linear_under_scaling = True

    def __init__(self, num_tasks: int, weights: list[float] | None = None) -> None:
        super().__init__(num_tasks)
        values = task_vector("fixed", "weights", weights, num_tasks, default=1.0)
        self.register_buffer("fixed_weights", values, persistent=False)

    def weights(self, losses: Tensor, ctx: StepContext | None = None) -> Tensor:
        return self.fixed_weights.to(device=losses.device, dtype=losses.dtype)
