"""Short training runs the task tests share: a task's own defaults, or a one-task suite through the engine."""

from __future__ import annotations

import dataclasses

import torch

from benchmark.config import parse_suite
from benchmark.specs import TrainSpec
from benchmark.task import MultiTaskModel, Task
from benchmark.trainer import run

TRAIN_SETTINGS = frozenset(f.name for f in dataclasses.fields(TrainSpec))
"""The keys a task's ``train_defaults`` may use."""


def train_with_defaults(task: Task, seed: int = 0) -> MultiTaskModel:
    """A model of ``task`` trained on the summed losses with Adam at the task's default learning rate,
    batch size and number of steps (model and batches seeded with ``seed``)."""
    torch.manual_seed(seed)
    model = task.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=task.train_defaults["lr"])
    batches = task.train_batches(task.train_defaults["batch_size"], torch.Generator().manual_seed(seed))
    for _ in range(task.train_defaults["steps"]):
        batch = next(batches)
        optimizer.zero_grad()
        task.losses(model(batch.inputs), batch).sum().backward()
        optimizer.step()
    return model


def last_metrics(task: str, steps: int, method: str = "ew", split: str = "val") -> dict[str, float]:
    """The ``split`` metrics at the last evaluation of ``task`` (registry key, default parameters)
    trained by ``method`` through the engine for ``steps`` steps, evaluated once at the end."""
    raw = {"train": {"steps": steps, "eval_every": steps}, "tasks": [task], "methods": [method]}
    result = run(parse_suite(raw).runs[0])
    assert result.status == "ok", result.error
    last = max(row.step for row in result.metrics)
    return {row.name: row.value for row in result.metrics if row.step == last and row.split == split}
