"""Geometric loss strategy: weights GLS / (T L), the gradient of the geometric mean, overflow safety."""

from __future__ import annotations

import torch

from benchmark.method import StepContext, get_method


def test_hand_computed_weights() -> None:
    # GLS of (1, 2, 4) is 2, so wᵢ = 2 / (3 Lᵢ).
    losses = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    weights = get_method("gls", num_tasks=3).weights(losses)
    torch.testing.assert_close(weights, torch.tensor([2 / 3, 1 / 3, 1 / 6], dtype=torch.float64))


def test_weights_are_the_gradient_of_the_geometric_mean() -> None:
    losses = torch.tensor([0.3, 1.7, 9.0, 0.05], dtype=torch.float64, requires_grad=True)
    losses.prod().pow(1 / 4).backward()
    torch.testing.assert_close(get_method("gls", num_tasks=4).weights(losses.detach()), losses.grad)


def test_golden_update() -> None:
    grads = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
    losses = torch.tensor([1.0, 4.0], dtype=torch.float64)  # GLS = 2: weights (1, 1/4)
    update = get_method("gls", num_tasks=2).combine(grads, StepContext(losses=losses))
    torch.testing.assert_close(update, torch.tensor([-2.5, 1.25, 1.25], dtype=torch.float64))


def test_large_and_zero_losses_stay_finite() -> None:
    method = get_method("gls", num_tasks=4)
    big = method.weights(torch.tensor([1e30, 1e30, 1e30, 1e20]))  # the product overflows float32
    expected = torch.tensor([1e30, 1e30, 1e30, 1e20], dtype=torch.float64).log()
    torch.testing.assert_close(big, ((expected.mean() - expected).exp() / 4).float(), rtol=1e-5, atol=0)
    assert torch.isfinite(method.weights(torch.tensor([0.0, 1.0, 2.0, 3.0]))).all()
    assert torch.isfinite(method.weights(torch.zeros(4))).all()
