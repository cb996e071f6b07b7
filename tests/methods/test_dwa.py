"""Dynamic weight average: unit weights for two epochs, then the softmax of epoch-average loss ratios."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.method import StepContext, get_method


def call(method: torch.nn.Module, losses: list[float], epoch: int) -> torch.Tensor:
    values = torch.tensor(losses, dtype=torch.float64)
    return method.weights(values, StepContext(losses=values, epoch=epoch))


def dwa_weights(ratios: list[float], temperature: float = 2.0) -> torch.Tensor:
    """The paper's formula, written out: K exp(r_k / T) / sum_i exp(r_i / T)."""
    exps = [math.exp(r / temperature) for r in ratios]
    return torch.tensor([len(ratios) * e / sum(exps) for e in exps], dtype=torch.float64)


def test_weights_over_four_epochs() -> None:
    method = get_method("dwa", num_tasks=2)
    ones = torch.ones(2, dtype=torch.float64)
    assert torch.equal(call(method, [1.0, 2.0], epoch=0), ones)
    assert torch.equal(call(method, [3.0, 6.0], epoch=0), ones)  # epoch 0 averages (2, 4)
    assert torch.equal(call(method, [1.0, 4.0], epoch=1), ones)  # epoch 1 averages (1, 4)
    expected = dwa_weights([1 / 2, 4 / 4])
    torch.testing.assert_close(call(method, [0.5, 2.0], epoch=2), expected)
    torch.testing.assert_close(call(method, [100.0, 0.1], epoch=2), expected)  # fixed within an epoch
    # epoch 2 averages (50.25, 1.05); epoch 3 compares it with epoch 1
    torch.testing.assert_close(call(method, [1.0, 1.0], epoch=3), dwa_weights([50.25 / 1, 1.05 / 4]))


def test_weights_sum_to_the_task_count_and_favour_the_slower_task() -> None:
    method = get_method("dwa", num_tasks=3, temperature=0.5)
    for epoch, losses in enumerate([[4.0, 4.0, 4.0], [1.0, 3.0, 4.0]]):
        call(method, losses, epoch)
    weights = call(method, [1.0, 1.0, 1.0], epoch=2)
    torch.testing.assert_close(weights.sum(), torch.tensor(3.0, dtype=torch.float64))
    assert weights[0] < weights[1] < weights[2]  # the task whose loss fell least gets the most weight
    torch.testing.assert_close(weights, dwa_weights([0.25, 0.75, 1.0], temperature=0.5))


def test_zero_losses_give_finite_weights() -> None:
    method = get_method("dwa", num_tasks=2)
    for epoch in range(4):
        weights = call(method, [0.0, 1.0], epoch)
        assert torch.isfinite(weights).all()


def test_golden_update_in_the_first_epoch_is_the_sum() -> None:
    grads = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
    update = get_method("dwa", num_tasks=2).combine(grads)
    torch.testing.assert_close(update, torch.tensor([2.0, 2.0, 2.0], dtype=torch.float64))


@pytest.mark.parametrize("temperature", [0, -1.0, float("inf"), "2"])
def test_bad_temperature_raises(temperature: object) -> None:
    with pytest.raises(ValueError, match="dwa: temperature"):
        get_method("dwa", num_tasks=2, temperature=temperature)
