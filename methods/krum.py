"""Krum and Multi-Krum: the gradients closest to their neighbours (Blanchard et al. 2017)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.method import GramianMethod, StepContext
from benchmark.registry import METHODS
from methods._checks import check_integer
from methods._gramian import scale_free


def krum_scores(gramian: Tensor, num_neighbours: int) -> Tensor:
    """Each gradient's sum of squared distances to its ``num_neighbours`` nearest other gradients.

    Distances come from the Gramian, ``‖gᵢ − gⱼ‖² = Gᵢᵢ + Gⱼⱼ − 2 Gᵢⱼ`` (clipped at 0 against rounding);
    a gradient's zero distance to itself is sorted first and skipped.
    """
    diagonal = gramian.diagonal()
    distances = (diagonal[:, None] + diagonal[None, :] - 2 * gramian).clamp_min(0)
    distances.fill_diagonal_(0)
    nearest = distances.topk(num_neighbours + 1, dim=1, largest=False).values
    return nearest[:, 1:].sum(1)


@METHODS.register("krum")
class Krum(GramianMethod):
    """Krum, Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
    Descent" (NeurIPS, https://proceedings.neurips.cc/paper/2017/file/f4b9ec30ad9f68f89b29639786cb62ef-Paper.pdf):
    each gradient scores the sum of its squared distances to its ``T − f − 2`` nearest neighbours, and
    the update is the gradient of least score; Multi-Krum averages the ``m`` gradients of least score.

    Args:
        n_byzantine: f, the number of gradients that may be adversarial (default 0: the paper assumes
            ``T > 2f + 2``; f ≥ 1 needs ``T ≥ f + 3`` so that every score has a neighbour).
        n_selected: m, how many gradients of least score are averaged (default 1: Krum).

    Departures: with f = 0 and T ≤ 2 there is no neighbour to score against; every score is then 0
    and the first gradient is selected (ties always go to the lowest index).
    TorchJD's ``Krum`` sums distances, not squared distances; this follows the paper.
    """

    description = "Select the gradient(s) closest to their T - f - 2 nearest neighbours (Multi-Krum)"
    citation = "Blanchard et al. 2017, NeurIPS"
    level = "param"
    deterministic = True
    linear_under_scaling = True

    def __init__(self, num_tasks: int, n_byzantine: int = 0, n_selected: int = 1) -> None:
        super().__init__(num_tasks)
        n_byzantine = check_integer("krum", "n_byzantine", n_byzantine)
        if n_byzantine > 0 and num_tasks < n_byzantine + 3:
            raise ValueError(
                f"krum: n_byzantine={n_byzantine} needs at least n_byzantine + 3 = {n_byzantine + 3} tasks, "
                f"got {num_tasks}"
            )
        self.n_byzantine = n_byzantine
        self.n_selected = check_integer("krum", "n_selected", n_selected, low=1, high=num_tasks)

    def gramian_weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        num_neighbours = max(self.num_tasks - self.n_byzantine - 2, 0)
        scores = krum_scores(scale_free(gramian), num_neighbours)
        selected = scores.argsort(stable=True)[: self.n_selected]  # ties: the lowest index first
        weights = torch.zeros_like(scores)
        return weights.index_fill_(0, selected, 1 / self.n_selected)
