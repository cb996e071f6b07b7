"""GradNorm: the gradient of L_grad by hand, renormalisation, loss ratios, and composition."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from benchmark.method import Composed, StepContext, get_method
from methods.gradnorm import GradNorm


def f64(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def gradnorm(num_tasks: int = 2, **hparams: object) -> GradNorm:
    method = get_method("gradnorm", num_tasks=num_tasks, **hparams)
    assert isinstance(method, GradNorm)
    return method


def sgd_step(method: GradNorm, lr: float) -> None:
    with torch.no_grad():
        method.loss_weights -= lr * method.loss_weights.grad
    method.loss_weights.grad = None


# g1 = (3, 0), g2 = (0, 1): ‖g‖ = (3, 1). Step 0, losses (2, 1), so L(0) = (2, 1) and r = (1, 1):
#   w = (1, 1), G = (3, 1), Ḡ = 2, target = (2, 2)  ->  w.grad = (sign(3 - 2) 3, sign(1 - 2) 1) = (3, -1),
#   update = g1 + g2 = (3, 1).
# SGD with lr 0.1 gives w = (0.7, 1.1); the next call renormalises to Σ w = 2: w = (7/9, 11/9).
# Step 1, losses (1, 1): L̃ = (1/2, 1), r = (2/3, 4/3), G = (7/3, 11/9), Ḡ = 16/9,
#   target = Ḡ r^1.5 = (0.968, 2.737)  ->  w.grad = (3, -1) again; update = (7/3, 11/9).
GRADS = [[3.0, 0.0], [0.0, 1.0]]


def test_first_step_by_hand() -> None:
    method = gradnorm()
    update = method.combine(f64(GRADS), StepContext(losses=f64([[2.0, 1.0]])[0]))
    torch.testing.assert_close(update, f64([[3.0, 1.0]])[0])
    torch.testing.assert_close(method.loss_weights.grad, torch.tensor([3.0, -1.0]))


def test_golden_matrix_first_step() -> None:
    # w = 1: the update is g1 + g2; ‖g‖ = (√18, √38) and r = 1, so the target is their mean for both.
    method = gradnorm()
    update = method.combine(
        f64([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]), StepContext(losses=f64([[3.0, 1.0]])[0])
    )
    torch.testing.assert_close(update, f64([[2.0, 2.0, 2.0]])[0])
    torch.testing.assert_close(method.loss_weights.grad, torch.tensor([-math.sqrt(18), math.sqrt(38)]))


def test_renormalised_weights_and_loss_ratios_by_hand() -> None:
    method = gradnorm()
    method.combine(f64(GRADS), StepContext(losses=f64([[2.0, 1.0]])[0]))
    sgd_step(method, 0.1)
    update = method.combine(f64(GRADS), StepContext(losses=f64([[1.0, 1.0]])[0], step=1))
    torch.testing.assert_close(update, f64([[7 / 3, 11 / 9]])[0])
    torch.testing.assert_close(method.loss_weights.detach(), torch.tensor([7 / 9, 11 / 9]))
    torch.testing.assert_close(method.loss_weights.grad, torch.tensor([3.0, -1.0]))
    ratios = method.loss_ratios(torch.tensor([1.0, 1.0]), torch.ones(2))
    torch.testing.assert_close(ratios, torch.tensor([2 / 3, 4 / 3]))


def test_the_target_follows_the_loss_ratios() -> None:
    # ‖g‖ = (1, 1), w = (1, 1): G = Ḡ = 1. Task 0 trains slower (L̃ = (1, 1/4), r = (1.6, 0.4)), so its
    # target is above its norm and its weight must grow (w.grad < 0); task 1's must shrink.
    method = gradnorm()
    grads = f64([[1.0, 0.0], [0.0, 1.0]])
    method.combine(grads, StepContext(losses=f64([[1.0, 1.0]])[0]))
    method.loss_weights.grad = None
    method.combine(grads, StepContext(losses=f64([[1.0, 0.25]])[0], step=1))
    torch.testing.assert_close(method.loss_weights.grad, torch.tensor([-1.0, 1.0]))


def test_gradients_accumulate_into_an_existing_grad() -> None:
    method = gradnorm()
    ctx = StepContext(losses=f64([[2.0, 1.0]])[0])
    method.combine(f64(GRADS), ctx)
    method.combine(f64(GRADS), ctx)
    torch.testing.assert_close(method.loss_weights.grad, torch.tensor([6.0, -2.0]))


def test_alpha_zero_equalises_the_weighted_norms() -> None:
    # With α = 0 the target is Ḡ: the fixed point has w₁‖g₁‖ = w₂‖g₂‖, w = 2 (1/3, 1) / (4/3) = (1/2, 3/2).
    method = gradnorm(alpha=0.0)
    ctx = StepContext(losses=f64([[1.0, 1.0]])[0])
    for _ in range(400):
        method.combine(f64(GRADS), ctx)
        sgd_step(method, 2e-3)
    weights = method.renormalize()
    torch.testing.assert_close(weights, torch.tensor([0.5, 1.5]), atol=0.02, rtol=0)


def test_weights_are_kept_non_negative_and_summing_to_t() -> None:
    method = gradnorm(num_tasks=3)
    with torch.no_grad():
        method.loss_weights.copy_(torch.tensor([-1.0, 1.0, 3.0]))
    torch.testing.assert_close(method.renormalize(), torch.tensor([0.0, 0.75, 2.25]))
    with torch.no_grad():
        method.loss_weights.copy_(torch.tensor([-1.0, 0.0, -3.0]))
    torch.testing.assert_close(method.renormalize(), torch.ones(3))


def test_missing_or_non_positive_losses_give_unit_ratios() -> None:
    method = gradnorm()
    assert torch.equal(method.loss_ratios(None, torch.ones(2)), torch.ones(2))
    method.loss_ratios(torch.tensor([0.0, 2.0]), torch.ones(2))  # L(0) = (0, 2): task 0 has no scale
    ratios = method.loss_ratios(torch.tensor([5.0, 1.0]), torch.ones(2))  # L̃ = (1, 1/2)
    torch.testing.assert_close(ratios, torch.tensor([4 / 3, 2 / 3]))
    zero_start = gradnorm()
    zero_start.loss_ratios(torch.zeros(2), torch.ones(2))
    torch.testing.assert_close(zero_start.loss_ratios(torch.tensor([3.0, 1.0]), torch.ones(2)), torch.ones(2))


def test_weights_returned_are_detached_and_the_default_level_is_feature() -> None:
    method = gradnorm()
    weights = method.task_weights(f64(GRADS), StepContext(losses=f64([[1.0, 1.0]])[0]))
    assert not weights.requires_grad
    assert GradNorm.level == "feature"


def test_feature_level_norms_use_every_entry() -> None:
    grads = torch.arange(2 * 3 * 2, dtype=torch.float64).reshape(2, 3, 2)
    method = gradnorm()
    method.combine(grads, StepContext(losses=f64([[1.0, 1.0]])[0], level="feature"))
    norms = grads.flatten(1).norm(dim=1).float()
    torch.testing.assert_close(method.loss_weights.grad, torch.tensor([-1.0, 1.0]) * norms)


def test_as_the_weighting_of_a_composed_method() -> None:
    ctx = StepContext(losses=f64([[2.0, 1.0]])[0])
    composed = Composed(gradnorm(), get_method("ew", num_tasks=2))
    torch.testing.assert_close(composed.combine(f64(GRADS), ctx), f64([[3.0, 1.0]])[0])
    torch.testing.assert_close(composed.weighting.loss_weights.grad, torch.tensor([3.0, -1.0]))


@pytest.mark.parametrize("alpha", [-0.5, math.nan, math.inf, "1.5"])
def test_bad_alpha_raises(alpha: object) -> None:
    with pytest.raises(ValueError, match="alpha"):
        gradnorm(alpha=alpha)
