"""A test task whose model has BatchNorm and dropout: extra forwards would move its statistics and
consume its randomness."""

from __future__ import annotations

from collections.abc import Iterator
from types import MappingProxyType

import torch
from torch import Tensor, nn

from benchmark.registry import TASKS
from benchmark.task import Batch, Metric, MultiTaskModel, Task


@TASKS.register("_noisy")
class NoisyTask(Task):
    """Test task: Linear -> BatchNorm -> ReLU -> Dropout trunk, two linear heads, mean-square losses."""

    description = "test-only task with BatchNorm and dropout"
    eval_splits = ("val",)
    train_defaults = MappingProxyType(
        {"steps": 6, "eval_every": 3, "batch_size": 8, "optimizer": "sgd", "lr": 0.05}
    )

    def __init__(self) -> None:
        super().__init__(["a", "b"])
        self.val_inputs = torch.linspace(-1, 1, 24).view(8, 3)

    def build_model(self) -> MultiTaskModel:
        trunk = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.3))
        return MultiTaskModel(trunk, [nn.Linear(6, 1) for _ in self.task_names])

    def train_batches(self, batch_size: int | None, generator: torch.Generator) -> Iterator[Batch]:
        while True:
            yield Batch(torch.randn(batch_size or 8, 3, generator=generator))

    def losses(self, outputs: list[Tensor], batch: Batch) -> Tensor:
        return torch.stack([(out - i).square().mean() for i, out in enumerate(outputs)])

    def metrics(self) -> list[Metric]:
        return [Metric("total", higher_is_better=False)]

    @torch.no_grad()
    def evaluate(self, model: MultiTaskModel, split: str) -> dict[str, float]:
        return {"total": float(self.losses(model(self.val_inputs), Batch()).sum())}
