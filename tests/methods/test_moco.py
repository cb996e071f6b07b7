"""MoCo: two steps by hand, the normalisations, the decaying step sizes, and state handling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from benchmark.method import StepContext, get_method
from methods._simplex import project_onto_simplex


def f64(values: list[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_two_steps_by_hand() -> None:
    # g₁ = e₁, g₂ = e₂ with losses (1, 2): H = diag(1, 2) ("loss" normalisation).
    grads = torch.eye(2, dtype=torch.float64)
    ctx = StepContext(losses=f64([1.0, 2.0]))
    method = get_method("moco", num_tasks=2)
    # Step 1: β₁ = 0.5, Y = H/2 = diag(1/2, 1); γ₁ = 0.1, YYᵀ = diag(1/4, 1):
    # λ = Π((1/2, 1/2) − 0.1 (1/8, 1/2)) = Π(0.4875, 0.45) = (0.51875, 0.48125); update λᵀY.
    torch.testing.assert_close(method.combine(grads, ctx), f64([0.51875 * 0.5, 0.48125]))
    # Step 2: β₂ = 0.5/√2, Y ← Y + β₂ (H − Y) = (1 + β₂) H/2; γ₂ = 0.1/√2.
    y = (1 + 0.5 / math.sqrt(2)) / 2 * f64([1.0, 2.0])
    lambd = project_onto_simplex(f64([0.51875, 0.48125]) * (1 - 0.1 / math.sqrt(2) * y**2))
    torch.testing.assert_close(method.combine(grads, ctx), lambd * y)
    torch.testing.assert_close(method.lambd, lambd)


@pytest.mark.parametrize(
    ("normalization", "losses", "rows"),
    [
        ("none", None, [3.0, 0.5]),  # the raw gradients
        ("l2", None, [1.0, 1.0]),  # unit gradients
        ("loss", None, [1.0, 1.0]),  # without losses they count as 1
        ("loss", [2.0, 4.0], [2.0, 4.0]),  # Lᵢ gᵢ/‖gᵢ‖
    ],
)
def test_normalizations(normalization: str, losses: list[float] | None, rows: list[float]) -> None:
    grads = torch.diag(f64([3.0, 0.5]))
    method = get_method("moco", num_tasks=2, normalization=normalization, beta=1.0)
    method.combine(grads, StepContext(losses=None if losses is None else f64(losses)))
    torch.testing.assert_close(method.tracked, torch.diag(f64(rows)))  # β₁ = 1: Y = H


def test_tracking_averages_the_gradients() -> None:
    # With β_k = 1/k (β = 1, σβ = 1) Y is the running mean of the normalised gradients.
    method = get_method("moco", num_tasks=2, beta=1.0, beta_sigma=1.0, normalization="none")
    steps = [
        torch.randn(2, 3, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in range(4)
    ]
    for grads in steps:
        method.combine(grads, StepContext())
    torch.testing.assert_close(method.tracked, torch.stack(steps).mean(0))


def test_weights_stay_on_the_simplex_and_update_is_their_combination() -> None:
    method = get_method("moco", num_tasks=4, rho=0.1)
    for seed in range(5):
        grads = torch.randn(4, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        update = method.combine(grads, StepContext(losses=torch.rand(4, dtype=torch.float64) + 0.5))
        assert method.lambd.min() >= 0
        torch.testing.assert_close(method.lambd.sum(), torch.tensor(1.0, dtype=torch.float64))
        torch.testing.assert_close(update, method.lambd @ method.tracked)


def test_state_restarts_when_the_shape_changes() -> None:
    method = get_method("moco", num_tasks=2)
    method.combine(torch.ones(2, 5, 3), StepContext())
    method.combine(torch.ones(2, 4, 3), StepContext())  # a smaller last batch at the feature level
    assert method.tracked.shape == (2, 4, 3)


@pytest.mark.parametrize(
    ("hparams", "argument"),
    [
        ({"beta": 0.0}, "beta"),
        ({"beta": 1.5}, "beta"),
        ({"gamma": 0.0}, "gamma"),
        ({"beta_sigma": -1.0}, "beta_sigma"),
        ({"gamma_sigma": math.nan}, "gamma_sigma"),
        ({"rho": -0.1}, "rho"),
        ({"normalization": "loss+"}, "normalization"),
    ],
)
def test_bad_hyperparameters_raise(hparams: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=f"moco: {argument}"):
        get_method("moco", num_tasks=3, **hparams)


def test_long_run_matches_the_plain_recursion() -> None:
    # β_k = 0.9 every step: Y's scalar factor shrinks 10x per step and is folded into the rows often.
    method = get_method("moco", num_tasks=3, beta=0.9, beta_sigma=0.0, normalization="none")
    expected = torch.zeros(3, 5, dtype=torch.float64)
    for seed in range(30):
        grads = torch.randn(3, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        update = method.combine(grads, StepContext())
        expected = expected - 0.9 * (expected - grads)
        torch.testing.assert_close(method.tracked, expected)
        torch.testing.assert_close(update, method.lambd @ expected)
