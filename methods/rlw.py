"""Random loss weighting: loss weights drawn afresh at every step."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.method import StepContext, WeightingMethod
from benchmark.registry import METHODS
from methods._checks import check_choice

DISTRIBUTIONS = ("normal", "dirichlet")


@METHODS.register("rlw")
class RandomLossWeighting(WeightingMethod):
    """Random loss weighting (RLW), Lin et al. 2022, "Reasonable Effectiveness of Random Weighting: A
    Litmus Test for Multi-Task Learning" (TMLR; https://arxiv.org/abs/2111.10603): at every step draw
    ``λ̃ ~ p`` and weight the losses by a normalisation of it onto the simplex.

    Args:
        distribution: ``"normal"`` (default, as in LibMTL's RLW): ``w = softmax(λ̃)``, ``λ̃ ~ N(0, I)``;
            ``"dirichlet"``: ``w ~ Dirichlet(1, ..., 1)``, sampled as normalised Exp(1) draws.

    All randomness comes from ``ctx.generator`` (torch's global RNG when it is ``None``). The weights
    sum to 1, as in the paper and LibMTL, so the update is on the scale of the *mean* loss gradient:
    ``1 / T`` of equal weighting's on average.
    """

    description = "Random loss weighting: weights drawn on the simplex at every step"
    citation = "Lin et al. 2022, TMLR"
    level = "param"
    linear_under_scaling = True

    def __init__(self, num_tasks: int, distribution: str = "normal") -> None:
        super().__init__(num_tasks)
        self.distribution = check_choice("rlw", "distribution", distribution, DISTRIBUTIONS)

    def weights(self, losses: Tensor, ctx: StepContext | None = None) -> Tensor:
        generator = ctx.generator if ctx is not None else None
        device = generator.device if generator is not None else losses.device
        sample = torch.empty(self.num_tasks, dtype=losses.dtype, device=device)
        if self.distribution == "normal":
            weights = torch.softmax(sample.normal_(generator=generator), dim=0)
        else:
            draws = sample.exponential_(generator=generator)
            weights = draws / draws.sum().clamp_min(torch.finfo(draws.dtype).tiny)
        return weights.to(losses.device)
