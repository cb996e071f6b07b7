"""Single-task learning: train on one task's loss only."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.method import StepContext, WeightingMethod
from benchmark.registry import METHODS
from methods._checks import check_integer


@METHODS.register("stl")
class SingleTask(WeightingMethod):
    """Single-task learning (STL) baseline: the update is the gradient of one task's loss, ``g_task``
    (weights ``one_hot(task)``). The reference point of the Δm% metric of Maninis et al. 2019 and
    Navon et al. 2022 ("Multi-Task Learning as a Bargaining Game", https://arxiv.org/abs/2202.01017),
    and the independent-training baseline of Caruana 1997 ("Multitask Learning").

    A suite entry ``stl`` without ``task`` expands into one run per task (:meth:`default_grid`).

    Args:
        task: index of the task trained, in ``[0, T)``; default 0.

    Departures: the shared trunk and every head are built as in multi-task runs; the other heads get
    no gradient, so only the trunk and the chosen head learn (the usual STL baseline trains one
    network per task, the same architecture with one head).
    """

    description = "Single-task learning: the gradient of one chosen task's loss"
    citation = "Caruana 1997, Machine Learning"
    level = "param"
    deterministic = True
    linear_under_scaling = True

    def __init__(self, num_tasks: int, task: int = 0) -> None:
        super().__init__(num_tasks)
        self.task = check_integer("stl", "task", task, high=num_tasks - 1)

    @classmethod
    def default_grid(cls, num_tasks: int) -> dict[str, list[int]]:
        return {"task": list(range(num_tasks))}

    def weights(self, losses: Tensor, ctx: StepContext | None = None) -> Tensor:
        one_hot = torch.zeros(self.num_tasks, dtype=losses.dtype, device=losses.device)
        one_hot[self.task] = 1
        return one_hot
