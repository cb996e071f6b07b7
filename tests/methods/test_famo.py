"""FAMO: the loss weights, the logit update by hand, a training loop against the authors' update rule."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.method import StepContext, get_method


def f64(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_first_weights_are_normalised_inverse_losses() -> None:
    # z is uniform at first, so w ∝ 1 / L: (1, 1/3) normalised.
    torch.testing.assert_close(get_method("famo", num_tasks=2).weights(f64([1.0, 3.0])), f64([0.75, 0.25]))


def test_min_losses_shift_the_losses() -> None:
    method = get_method("famo", num_tasks=2, min_losses=[0.5, 0.5], eps=1e-12)
    # D = (0.5, 2.5): w ∝ (2, 0.4)
    torch.testing.assert_close(method.weights(f64([1.0, 3.0])), f64([5 / 6, 1 / 6]))
    scalar = get_method("famo", num_tasks=2, min_losses=0.5, eps=1e-12)
    torch.testing.assert_close(scalar.weights(f64([1.0, 3.0])), f64([5 / 6, 1 / 6]))


def test_weights_follow_the_logits() -> None:
    method = get_method("famo", num_tasks=2, eps=1e-12)
    with torch.no_grad():
        method.logits.copy_(torch.tensor([math.log(3.0), 0.0]))  # z = (3/4, 1/4)
    # z / L = (3/4, 1/8) for L = (1, 2): normalised (6/7, 1/7)
    torch.testing.assert_close(method.weights(f64([1.0, 2.0])), f64([6 / 7, 1 / 7]))


def test_logit_gradient_by_hand_over_two_steps() -> None:
    gamma = 0.1
    method = get_method("famo", num_tasks=2, gamma=gamma, eps=1e-12)
    method.weights(f64([1.0, 3.0]))
    method.losses_after_step(f64([0.5, 2.7]))
    # δ = log(1/0.5), log(3/2.7); with z = (½, ½), Jᵀδ = z ⊙ (δ − z·δ) = ±(δ₁ − δ₂)/4; ξ = 0 so no decay.
    half_gap = (math.log(2.0) - math.log(3 / 2.7)) / 4
    torch.testing.assert_close(method.logits.grad, torch.tensor([half_gap, -half_gap]))

    with torch.no_grad():  # an SGD step with lr 1, as the trainer's method optimiser would take
        method.logits -= method.logits.grad
    method.logits.grad = None
    xi = torch.tensor([-half_gap, half_gap], dtype=torch.float64)
    z = torch.softmax(xi, 0)
    method.weights(f64([0.5, 2.7]))
    method.losses_after_step(f64([0.4, 2.0]))
    delta = f64([math.log(0.5 / 0.4), math.log(2.7 / 2.0)])
    expected = z * (delta - (z * delta).sum()) + gamma * xi
    torch.testing.assert_close(method.logits.grad, expected.float())


def _regression(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(64, 5, generator=generator, dtype=torch.float64)
    targets = torch.randn(64, 3, generator=generator, dtype=torch.float64) * f64([1.0, 10.0, 0.1])
    return inputs, targets


def test_training_matches_the_authors_update_rule() -> None:
    """20 steps of a 3-task regression: our weights + logit gradient under Adam(0.025), against the
    update of the authors' ``famo.py``: loss Σ zᵢ log Dᵢ / c, ξ stepped by Adam(0.025, weight_decay=γ)
    with gradient ``autograd.grad(softmax(ξ), ξ, δ)``."""
    inputs, targets = _regression(0)
    gamma, eps = 1e-3, 1e-8
    ours, theirs = (torch.nn.Linear(5, 3).double() for _ in range(2))
    theirs.load_state_dict(ours.state_dict())
    method = get_method("famo", num_tasks=3, gamma=gamma, eps=eps)
    method_opt = torch.optim.Adam(method.parameters(), lr=0.025)
    xi = torch.zeros(3, requires_grad=True)
    xi_opt = torch.optim.Adam([xi], lr=0.025, weight_decay=gamma)
    model_opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (ours, theirs)]

    def task_losses(model: torch.nn.Module) -> torch.Tensor:
        return (model(inputs) - targets).pow(2).mean(0)

    for _ in range(20):
        for opt in (*model_opts, method_opt, xi_opt):
            opt.zero_grad(set_to_none=True)
        losses = task_losses(ours)
        (method.weights(losses.detach(), StepContext(losses=losses.detach())) @ losses).backward()
        model_opts[0].step()
        with torch.no_grad():
            method.losses_after_step(task_losses(ours))
        method_opt.step()

        before = task_losses(theirs)
        z = torch.softmax(xi, -1).to(before)
        gaps = before - 0 + eps
        (gaps.log() * z / (z / gaps).sum().detach()).sum().backward()
        model_opts[1].step()
        with torch.no_grad():
            delta = (before.detach() + eps).log() - (task_losses(theirs) + eps).log()
        xi.grad = torch.autograd.grad(torch.softmax(xi, -1), xi, grad_outputs=delta.float())[0]
        xi_opt.step()

    torch.testing.assert_close(method.logits.detach(), xi.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-6, atol=1e-8)
    assert method.logits.detach().abs().max() > 1e-2  # the logits did move


def test_zero_losses_give_finite_weights_and_gradient() -> None:
    method = get_method("famo", num_tasks=3)
    weights = method.weights(torch.zeros(3))
    torch.testing.assert_close(weights, torch.full((3,), 1 / 3))
    method.losses_after_step(torch.tensor([0.0, -1.0, 2.0]))  # below l* = 0 is clamped
    assert torch.isfinite(method.logits.grad).all()


def test_losses_after_step_needs_weights_first() -> None:
    with pytest.raises(RuntimeError, match="famo: losses_after_step was called before weights"):
        get_method("famo", num_tasks=2).losses_after_step(torch.ones(2))


def test_declares_the_after_step_hook() -> None:
    assert get_method("famo", num_tasks=2).needs_losses_after_step


@pytest.mark.parametrize(
    ("hparams", "match"),
    [
        ({"gamma": -1.0}, "famo: gamma"),
        ({"gamma": float("nan")}, "famo: gamma"),
        ({"eps": 0.0}, "famo: eps"),
        ({"min_losses": [0.0]}, "famo: min_losses"),
        ({"min_losses": [0.0, float("inf")]}, "famo: min_losses"),
        ({"min_losses": "low"}, "famo: min_losses"),
        ({"min_losses": True}, "famo: min_losses"),
    ],
)
def test_bad_hyperparameters_raise(hparams: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_method("famo", num_tasks=2, **hparams)
