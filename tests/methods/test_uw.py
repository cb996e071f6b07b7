"""Uncertainty weighting: weights ½ exp(−s), the gradient of the log-variances, and their optimum."""

from __future__ import annotations

import math

import torch

from benchmark.method import StepContext, get_method


def test_initial_weights_and_log_variance_gradient() -> None:
    method = get_method("uw", num_tasks=3)
    losses = torch.tensor([0.5, 1.0, 4.0])
    torch.testing.assert_close(method.weights(losses), torch.full((3,), 0.5))
    torch.testing.assert_close(method.log_vars.grad, torch.tensor([0.25, 0.0, -1.5]))  # ½ − ½ L


def test_weights_and_gradient_match_the_objective() -> None:
    method = get_method("uw", num_tasks=2)
    with torch.no_grad():
        method.log_vars.copy_(torch.tensor([math.log(2.0), -1.0]))
    losses = torch.tensor([3.0, 0.5], requires_grad=True)
    weights = method.weights(losses.detach())
    torch.testing.assert_close(weights, torch.tensor([0.25, 0.5 * math.e]))

    s = method.log_vars.detach().clone().requires_grad_()
    objective = (0.5 * torch.exp(-s) * losses + 0.5 * s).sum()
    objective.backward()
    torch.testing.assert_close(weights, losses.grad)  # d objective / d L
    torch.testing.assert_close(method.log_vars.grad, s.grad)


def test_gradient_accumulates_and_weights_follow_the_losses_dtype() -> None:
    method = get_method("uw", num_tasks=2)
    losses = torch.tensor([2.0, 3.0], dtype=torch.float64)
    weights = method.weights(losses)
    method.weights(losses)
    assert weights.dtype == torch.float64 and method.log_vars.grad.dtype == torch.float32
    torch.testing.assert_close(method.log_vars.grad, torch.tensor([-1.0, -2.0]))


def test_log_variances_converge_to_the_log_losses() -> None:
    """With the losses held fixed, s minimises ½ e^{−s} L + ½ s at s = log L, where the weight is 1/(2L)."""
    method = get_method("uw", num_tasks=3)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5)
    losses = torch.tensor([0.2, 1.0, 5.0])
    for _ in range(300):
        optimizer.zero_grad(set_to_none=True)
        weights = method.weights(losses, StepContext(losses=losses))
        optimizer.step()
    torch.testing.assert_close(method.log_vars.detach(), losses.log(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(weights, 0.5 / losses, rtol=1e-3, atol=1e-4)


def test_golden_update() -> None:
    grads = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
    update = get_method("uw", num_tasks=2).combine(
        grads, StepContext(losses=torch.ones(2, dtype=torch.float64))
    )
    torch.testing.assert_close(update, torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))


def test_zero_losses_give_finite_weights() -> None:
    assert torch.isfinite(get_method("uw", num_tasks=2).weights(torch.zeros(2))).all()
