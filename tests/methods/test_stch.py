"""Smooth Tchebycheff: log-loss warm-up, the nadir, the smoothed-max weights, and validation."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.method import StepContext, get_method


def call(method: torch.nn.Module, losses: list[float], epoch: int) -> torch.Tensor:
    values = torch.tensor(losses, dtype=torch.float64)
    return method.weights(values, StepContext(losses=values, epoch=epoch))


def test_warm_up_weights_are_inverse_losses_and_the_nadir_is_the_last_warm_up_mean() -> None:
    method = get_method("stch", num_tasks=2)
    for epoch in range(4):
        torch.testing.assert_close(call(method, [2.0, 0.5], epoch), torch.tensor([0.5, 2.0]).double())
    torch.testing.assert_close(call(method, [1.0, 1.0], 4), torch.ones(2).double())
    call(method, [3.0, 1.0], 4)  # the nadir is the mean over epoch 4: (2, 1)
    # log(L / n) = (0, log 2): s = softmax = (1/3, 2/3); w = T s / L = (1/3, 2/3)
    torch.testing.assert_close(call(method, [2.0, 2.0], 5), torch.tensor([1 / 3, 2 / 3]).double())
    torch.testing.assert_close(method.nadir, torch.tensor([2.0, 1.0]).double())
    call(method, [9.0, 9.0], 6)
    torch.testing.assert_close(method.nadir, torch.tensor([2.0, 1.0]).double())  # fixed from then on


@pytest.mark.parametrize("mu", [1.0, 0.3, 5.0])
def test_weights_are_the_gradient_of_the_authors_objective(mu: float) -> None:
    method = get_method("stch", num_tasks=3, mu=mu, warmup_epoch=0)
    nadir = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    method.weights(nadir, StepContext(epoch=0))
    losses = torch.tensor([1.5, 0.9, 0.2], dtype=torch.float64, requires_grad=True)
    logs = torch.log(losses / nadir)
    (mu * torch.log(torch.exp((logs - logs.max().detach()) / mu).sum()) * 3).backward()
    torch.testing.assert_close(method.weights(losses.detach(), StepContext(epoch=1)), losses.grad)


def test_small_mu_concentrates_on_the_worst_normalised_task() -> None:
    method = get_method("stch", num_tasks=3, mu=1e-3, warmup_epoch=0)
    call(method, [1.0, 1.0, 1.0], 0)
    weights = call(method, [0.5, 4.0, 2.0], 1)  # task 1 is the furthest above its nadir
    torch.testing.assert_close(weights, torch.tensor([0.0, 3 / 4.0, 0.0]).double())


def test_golden_update_during_warm_up() -> None:
    grads = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
    losses = torch.tensor([1.0, 4.0], dtype=torch.float64)
    update = get_method("stch", num_tasks=2).combine(grads, StepContext(losses=losses))
    torch.testing.assert_close(update, torch.tensor([-2.5, 1.25, 1.25], dtype=torch.float64))


def test_nadir_falls_back_to_the_first_losses_after_warm_up() -> None:
    method = get_method("stch", num_tasks=2, warmup_epoch=1)
    call(method, [1.0, 1.0], 0)
    torch.testing.assert_close(call(method, [4.0, 2.0], 3), torch.tensor([0.25, 0.5]).double())
    torch.testing.assert_close(method.nadir, torch.tensor([4.0, 2.0]).double())


def test_zero_losses_give_finite_weights() -> None:
    method = get_method("stch", num_tasks=2, warmup_epoch=0)
    for epoch in range(3):
        assert torch.isfinite(call(method, [0.0, 1.0], epoch)).all()
    assert torch.isfinite(call(method, [1.0, 0.0], 4)).all()


@pytest.mark.parametrize(
    ("hparams", "match"),
    [
        ({"mu": 0.0}, "stch: mu"),
        ({"mu": math.inf}, "stch: mu"),
        ({"warmup_epoch": -1}, "stch: warmup_epoch"),
        ({"warmup_epoch": 1.5}, "stch: warmup_epoch"),
        ({"warmup_epoch": True}, "stch: warmup_epoch"),
    ],
)
def test_bad_hyperparameters_raise(hparams: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_method("stch", num_tasks=2, **hparams)
