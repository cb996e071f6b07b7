"""Scale-invariant loss: weights 1/L, invariance to rescaled losses, finite at zero."""

from __future__ import annotations

import torch

from benchmark.method import StepContext, get_method


def test_weights_are_inverse_losses() -> None:
    losses = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    weights = get_method("si", num_tasks=3).weights(losses)
    torch.testing.assert_close(weights, torch.tensor([2.0, 0.5, 0.25], dtype=torch.float64))


def test_weights_are_the_gradient_of_the_summed_log_losses() -> None:
    losses = torch.tensor([0.3, 1.7, 9.0], requires_grad=True)
    losses.log().sum().backward()
    torch.testing.assert_close(get_method("si", num_tasks=3).weights(losses.detach()), losses.grad)


def test_rescaling_a_loss_leaves_the_update_unchanged() -> None:
    """Loss i times c has gradient c gᵢ and weight 1 / (c Lᵢ): the update does not move."""
    grads = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
    losses = torch.tensor([1.0, 4.0], dtype=torch.float64)
    scales = torch.tensor([1e3, 1e-2], dtype=torch.float64)
    method = get_method("si", num_tasks=2)
    update = method.combine(grads, StepContext(losses=losses))
    torch.testing.assert_close(update, torch.tensor([-2.5, 1.25, 1.25], dtype=torch.float64))  # golden
    rescaled = method.combine(grads * scales[:, None], StepContext(losses=losses * scales))
    torch.testing.assert_close(rescaled, update)


def test_zero_and_negative_losses_give_finite_weights() -> None:
    for dtype in (torch.float32, torch.float64):
        weights = get_method("si", num_tasks=3).weights(torch.tensor([0.0, -1.0, 2.0], dtype=dtype))
        torch.testing.assert_close(weights, torch.tensor([1e8, 1e8, 0.5], dtype=dtype))
