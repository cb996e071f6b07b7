"""Geometric loss strategy: minimise the geometric mean of the task losses."""

from __future__ import annotations

from torch import Tensor

from benchmark.method import StepContext, WeightingMethod
from benchmark.registry import METHODS
from methods._losses import floored


@METHODS.register("gls")
class GeometricLossStrategy(WeightingMethod):
    """Geometric loss strategy (GLS), Chennupati et al. 2019, "MultiNet++: Multi-Stream Feature
    Aggregation and Geometric Loss Strategy for Multi-Task Learning" (https://arxiv.org/abs/1904.08492):
    minimise the geometric mean of the losses, ``GLS = (Πᵢ Lᵢ)^(1/T)``. Its gradient is
    ``Σᵢ GLS / (T Lᵢ) gᵢ``, so ``wᵢ = GLS / (T Lᵢ)``, computed in log space as
    ``exp(mean log L − log Lᵢ) / T`` so that the product cannot overflow. It is the scale-invariant
    update (``si``) times ``GLS / T``. No hyperparameters.

    Departures: losses are clamped to ``1e-8`` first (the paper assumes positive losses), so the weights
    stay finite when a loss is zero.
    """

    description = "Geometric loss strategy: minimise the geometric mean of the losses"
    citation = "Chennupati et al. 2019, CVPR Workshops"
    level = "param"
    deterministic = True
    permutation_invariant = True
    linear_under_scaling = True

    def weights(self, losses: Tensor, ctx: StepContext | None = None) -> Tensor:
        logs = floored(losses).log()
        return (logs.mean() - logs).exp() / self.num_tasks
