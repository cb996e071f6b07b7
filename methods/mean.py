"""Mean of the task gradients: minimise the average of the task losses."""

from __future__ import annotations

from torch import Tensor

from benchmark.method import StepContext, WeightingMethod
from benchmark.registry import METHODS


@METHODS.register("mean")
class Mean(WeightingMethod):
    """The mean of the task gradients, ``(1/T) Σᵢ gᵢ``: the gradient of the average loss, the common
    baseline of gradient aggregators (TorchJD's ``Mean``; equal weighting scaled by ``1/T``).

    No hyperparameters; ``weights`` is ``ones(T) / T``, so the engine needs a single backward.
    """

    description = "Mean of the task gradients (equal weights 1/T)"
    citation = "Quinton & Rey 2024, arXiv"
    level = "param"
    deterministic = True
    permutation_invariant = True
    linear_under_scaling = True

    def weights(self, losses: Tensor, ctx: StepContext | None = None) -> Tensor:
        return losses.new_full((self.num_tasks,), 1 / self.num_tasks)
