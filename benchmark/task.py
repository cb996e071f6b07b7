"""The task interface: a model (shared trunk + one head per task), data, per-task losses and metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from benchmark.registry import TASKS, hyperparameters


@dataclass(frozen=True)
class Metric:
    """A reported metric and its direction."""

    name: str
    higher_is_better: bool
    description: str = ""


@dataclass(frozen=True)
class Landscape:
    """A task whose shared parameters are a point in the plane, drawn with its trajectories.

    Attributes:
        bounds: ``(x1_min, x1_max, x2_min, x2_max)`` of the plot.
        losses: maps points ``[N, 2]`` to the task losses ``[N, T]``.
        pareto_set: points ``[M, 2]`` of the (numerically computed) Pareto set, in parameter space.
        trajectory: the names of the two values :meth:`Task.evaluate` logs as the current point.
    """

    bounds: tuple[float, float, float, float]
    losses: Callable[[Tensor], Tensor]
    pareto_set: Tensor
    trajectory: tuple[str, str] = ("x1", "x2")


@dataclass
class Batch:
    """One training batch. ``inputs`` is ``None`` for tasks without data (toy problems)."""

    inputs: Tensor | None = None
    targets: Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(move(self.inputs), move(self.targets))


class MultiTaskModel(nn.Module):
    """``trunk(inputs) -> z``; ``heads[i](z) -> output_i``. Only the trunk's parameters are shared.

    Loss i must depend on output i alone: the engine then gets every task's gradient w.r.t. z from
    one backward, each head reading its own alias of z (:meth:`forward_each`).
    """

    def __init__(self, trunk: nn.Module, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(heads)

    def forward(self, inputs: Tensor | None) -> list[Tensor]:
        return self.forward_heads(self.trunk(inputs))

    def forward_heads(self, z: Tensor) -> list[Tensor]:
        return [head(z) for head in self.heads]

    def forward_each(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        """Head i applied to ``inputs[i]``."""
        return [head(z) for head, z in zip(self.heads, inputs, strict=True)]

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.trunk.parameters() if p.requires_grad]


class Task:
    """Base class of every task. Subclasses register with ``@TASKS.register("key")``.

    Class attributes:
        name: the registry key (set by the decorator).
        description: one line for ``run_all.py list``.
        train_defaults: training settings this task is meant to run with (keys of ``TrainSpec``);
            a suite may override each. A task may set it per instance in ``__init__``.
        eval_splits: the splits :meth:`evaluate` is called on. With a ``"val"`` split, the report
            selects the evaluation step on validation (``selection_metric``) and reads test there.
        selection_metric: the validation metric used for model selection (its direction is taken
            from :meth:`metrics`); ``None`` averages all higher-is-better metrics.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    train_defaults: Mapping[str, Any] = MappingProxyType({})
    eval_splits: ClassVar[tuple[str, ...]] = ("val", "test")
    selection_metric: ClassVar[str | None] = None

    def __init__(self, task_names: Sequence[str]) -> None:
        if not task_names:
            raise ValueError(f"{type(self).__name__}: a task needs at least one loss")
        self.task_names = tuple(task_names)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def build_model(self) -> MultiTaskModel:
        """A freshly initialised model; the trainer seeds torch's RNG before calling it."""
        raise NotImplementedError

    def train_batches(self, batch_size: int | None, generator: torch.Generator) -> Iterator[Batch]:
        """An endless stream of training batches drawn with ``generator``."""
        raise NotImplementedError

    def steps_per_epoch(self, batch_size: int | None) -> int:
        """Training steps per pass over the training data (``ctx.epoch`` counts these); 1 for tasks
        without a finite training set, such as the toys."""
        return 1

    def losses(self, outputs: list[Tensor], batch: Batch) -> Tensor:
        """The T task losses ``[T]`` for the heads' ``outputs`` on ``batch``; loss i reads
        ``outputs[i]`` only."""
        raise NotImplementedError

    def metrics(self) -> list[Metric]:
        """The metrics a report tables, with their directions."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: MultiTaskModel, split: str) -> dict[str, float]:
        """Every metric of :meth:`metrics` on ``split``; extra diagnostic values may be added.

        Runs under ``torch.no_grad()``: code that needs autograd wraps itself in ``torch.enable_grad()``.
        Data goes to the model's device (``next(model.parameters()).device``).
        """
        raise NotImplementedError

    def landscape(self) -> Landscape | None:
        """For 2-D toy problems: what a report needs to draw trajectories over the loss contours."""
        return None

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Hyperparameters and their defaults, from the constructor signature."""
        return hyperparameters(cls)


def get_task(name: str, **params: Any) -> Task:
    return TASKS.create(name, **params)
