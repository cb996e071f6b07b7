"""A task small enough to differentiate by hand: z = W x, y_i = a_i . z, L_i = mean over the batch of y_i.

Hence dL_i/dW = a_i x_mean^T, dL_i/dz = a_i / B on every row, dL_i/da_i = W x_mean.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import MappingProxyType

import torch
from torch import Tensor, nn

from benchmark.registry import TASKS
from benchmark.task import Batch, Metric, MultiTaskModel, Task

HEADS = torch.tensor([[1.0, 2.0], [-3.0, 0.5], [0.25, -1.0]])
TRUNK = torch.tensor([[0.5, -1.0], [2.0, 1.5]])


@TASKS.register("_linear")
class LinearTask(Task):
    """Test task: linear trunk and heads with fixed initial weights; losses are mean head outputs."""

    description = "test-only linear task"
    eval_splits = ("val",)
    train_defaults = MappingProxyType(
        {"steps": 6, "eval_every": 3, "batch_size": 4, "optimizer": "sgd", "lr": 0.01}
    )

    def __init__(self, num_tasks: int = 2, fail: bool = False) -> None:
        if fail:
            raise RuntimeError("this task was asked to fail")
        super().__init__([f"t{i}" for i in range(num_tasks)])
        self.val_inputs = torch.linspace(-1, 1, 8).view(4, 2)

    def build_model(self) -> MultiTaskModel:
        trunk = nn.Linear(2, 2, bias=False)
        heads = [nn.Linear(2, 1, bias=False) for _ in range(self.num_tasks)]
        with torch.no_grad():
            trunk.weight.copy_(TRUNK)
            for head, a in zip(heads, HEADS, strict=False):
                head.weight.copy_(a.view(1, 2))
        return MultiTaskModel(trunk, heads)

    def train_batches(self, batch_size: int | None, generator: torch.Generator) -> Iterator[Batch]:
        while True:
            yield Batch(torch.randn(batch_size or 4, 2, generator=generator))

    def losses(self, outputs: list[Tensor], batch: Batch) -> Tensor:
        return torch.stack([out.mean() for out in outputs])

    def metrics(self) -> list[Metric]:
        return [Metric("total", higher_is_better=False)]

    @torch.no_grad()
    def evaluate(self, model: MultiTaskModel, split: str) -> dict[str, float]:
        return {"total": float(self.losses(model(self.val_inputs), Batch()).sum())}
