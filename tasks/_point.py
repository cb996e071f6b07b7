"""What the toy tasks share: the model is a point x, trained on no data.

The shared "trunk" is the point itself (:class:`Point`), each head a parameter-free loss of it; a
:class:`PointTask` has one endless stream of empty batches, stacks the heads' scalar outputs as its
losses, is deterministic (nothing is drawn from the seed but by the method) and evaluates on
``train`` only, reading the point with :meth:`PointTask.point`. Used by toy2d, quadratics and
sign_conflict.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from benchmark.task import Batch, MultiTaskModel, Task


class Point(nn.Module):
    """The shared "trunk": the point x (float32, from ``start``), returned as z of shape ``[1, d]``;
    inputs are ignored."""

    def __init__(self, start: Sequence[float] | Tensor) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.as_tensor(start, dtype=torch.float32).clone())

    def forward(self, inputs: Tensor | None = None) -> Tensor:
        return self.x.unsqueeze(0)


class PointTask(Task):
    """Base of the tasks whose model is a :class:`Point` with parameter-free loss heads."""

    eval_splits = ("train",)
    deterministic = True

    def train_batches(self, batch_size: int | None, generator: torch.Generator) -> Iterator[Batch]:
        return itertools.repeat(Batch())

    def losses(self, outputs: list[Tensor], batch: Batch) -> Tensor:
        return torch.stack(outputs)

    @staticmethod
    def point(model: MultiTaskModel) -> Tensor:
        """The model's current point x, ``[d]`` float64 on the CPU."""
        return model.trunk(None)[0].detach().cpu().double()
