"""Equal weighting: minimise the plain sum of the task losses."""

from __future__ import annotations

from torch import Tensor

from benchmark.method import StepContext, WeightingMethod
from benchmark.registry import METHODS


@METHODS.register("ew")
class EqualWeighting(WeightingMethod):
    """Equal weighting (unitary scalarisation): the update is ``sum_i g_i``, i.e. the gradient of
    ``sum_i L_i``, as in hard parameter sharing (Caruana 1997, "Multitask Learning").

    No hyperparameters; ``weights`` is ``ones(T)``, so the engine needs a single backward.
    """

    description = "Equal weighting: minimise the sum of the task losses"
    citation = "Caruana 1997, Machine Learning"
    level = "param"
    deterministic = True
    permutation_invariant = True
    linear_under_scaling = True

    def weights(self, losses: Tensor, ctx: StepContext | None = None) -> Tensor:
        return losses.new_ones(self.num_tasks)
