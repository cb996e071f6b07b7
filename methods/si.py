"""Scale-invariant loss: minimise the sum of the log task losses."""

from __future__ import annotations

from torch import Tensor

from benchmark.method import StepContext, WeightingMethod
from benchmark.registry import METHODS
from methods._losses import floored


@METHODS.register("si")
class ScaleInvariant(WeightingMethod):
    """Scale-invariant (SI) baseline of Navon et al. 2022, "Multi-Task Learning as a Bargaining Game"
    (https://arxiv.org/abs/2202.01017, Section 6 baselines; ``ScaleInvariantLinearScalarization`` in
    their code): minimise ``Σᵢ log Lᵢ``, whose gradient is ``Σᵢ gᵢ / Lᵢ``, so ``wᵢ = 1 / Lᵢ``.

    Multiplying a loss by a constant leaves the update unchanged, hence the name. No hyperparameters.

    Departures: losses are clamped to ``1e-8`` before inverting (the reference takes ``log Lᵢ`` of the
    raw loss and is undefined at 0), so the weights stay finite for zero or negative losses.
    """

    description = "Scale-invariant loss: minimise the sum of the log losses (weights 1 / L)"
    citation = "Navon et al. 2022, ICML"
    level = "param"
    deterministic = True
    permutation_invariant = True
    linear_under_scaling = True

    def weights(self, losses: Tensor, ctx: StepContext | None = None) -> Tensor:
        return floored(losses).reciprocal()
