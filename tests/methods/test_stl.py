"""Single-task learning: one-hot weights, one run per task by default, validation of ``task``."""

from __future__ import annotations

import pytest
import torch

from benchmark.method import get_method
from benchmark.registry import METHODS


def test_weights_are_one_hot() -> None:
    losses = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    weights = get_method("stl", num_tasks=3, task=1).weights(losses)
    assert torch.equal(weights, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("task", [0, 1])
def test_golden_update_is_the_chosen_gradient(task: int) -> None:
    grads = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
    assert torch.equal(get_method("stl", num_tasks=2, task=task).combine(grads), grads[task])


def test_default_task_is_the_first() -> None:
    grads = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(get_method("stl", num_tasks=3).combine(grads), grads[0])


def test_default_grid_is_one_run_per_task() -> None:
    assert METHODS.get("stl").default_grid(4) == {"task": [0, 1, 2, 3]}


@pytest.mark.parametrize("task", [-1, 3, 1.0, True, "0", None])
def test_bad_task_raises(task: object) -> None:
    with pytest.raises(ValueError, match=r"stl: task must be an integer in \[0, 2\]"):
        get_method("stl", num_tasks=3, task=task)
