"""DB-MTL: updates by hand, a reference loop of Algorithm 1, steps, levels and hyperparameters."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from benchmark.method import Method, StepContext, get_method
from methods.db_mtl import row_norms


def f64(*values: float) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


def db_mtl(num_tasks: int = 2, **hparams: object) -> Method:
    return get_method("db_mtl", num_tasks=num_tasks, **hparams)


def reference(sequence: list[tuple[Tensor, Tensor]], beta: float, beta_sigma: float) -> list[Tensor]:
    """Algorithm 1 written out: ĝ ← βₜ ĝ + (1 − βₜ) ∇ log L, update = maxₖ ‖ĝₖ‖ Σᵢ ĝᵢ / ‖ĝᵢ‖."""
    averages, updates = torch.zeros_like(sequence[0][0]), []
    for t, (grads, losses) in enumerate(sequence, start=1):
        beta_t = beta / t**beta_sigma
        averages = beta_t * averages + (1 - beta_t) * grads / losses[:, None]
        norms = averages.norm(dim=1)
        updates.append(norms.max() * (averages / norms[:, None]).sum(0))
    return updates


# g1 = (3, 0), g2 = (0, 1), losses (1, 1/2): ∇ log L = (3, 0), (0, 2). With β = 0.9 the first average is
# 0.1 of that, norms (0.3, 0.2), so the update is 0.3 ((1, 0) + (0, 1)) = (0.3, 0.3); the same
# gradients again give averages 0.19 of it and the update (0.57, 0.57).
GRADS = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
LOSSES = f64(1.0, 0.5)


def test_two_steps_by_hand() -> None:
    method = db_mtl()
    first = method.combine(GRADS, StepContext(losses=LOSSES, step=0))
    second = method.combine(GRADS, StepContext(losses=LOSSES, step=1))
    torch.testing.assert_close(first, f64(0.3, 0.3))
    torch.testing.assert_close(second, f64(0.57, 0.57))


def test_golden_matrix_without_averaging() -> None:
    # β = 0, L = 1: the update is maxₖ‖gₖ‖ Σᵢ gᵢ / ‖gᵢ‖ with ‖g‖ = (√18, √38).
    grads = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
    update = db_mtl(beta=0.0).combine(grads, StepContext(losses=f64(1.0, 1.0)))
    scale = math.sqrt(38) / math.sqrt(18)
    torch.testing.assert_close(update, f64(6 - 4 * scale, 1 + scale, 1 + scale))


@pytest.mark.parametrize(("beta", "beta_sigma"), [(0.9, 0.0), (0.5, 0.5), (0.0, 0.0)])
def test_matches_the_reference_loop(beta: float, beta_sigma: float) -> None:
    generator = torch.Generator().manual_seed(0)
    sequence = [
        (
            torch.randn(3, 6, generator=generator, dtype=torch.float64),
            torch.rand(3, dtype=torch.float64) + 0.1,
        )
        for _ in range(5)
    ]
    method = db_mtl(3, beta=beta, beta_sigma=beta_sigma)
    updates = [
        method.combine(g, StepContext(losses=losses, step=s)) for s, (g, losses) in enumerate(sequence)
    ]
    for ours, expected in zip(updates, reference(sequence, beta, beta_sigma), strict=True):
        torch.testing.assert_close(ours, expected)


def test_every_task_gets_the_largest_magnitude() -> None:
    # Orthogonal gradients of very different sizes: each component of the update has the largest norm.
    grads = torch.tensor([[1e-3, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 50.0]], dtype=torch.float64)
    update = db_mtl(3, beta=0.0).combine(grads, StepContext(losses=f64(1.0, 1.0, 1.0)))
    torch.testing.assert_close(update, f64(50.0, 50.0, 50.0))


def test_without_losses_the_gradients_are_not_divided() -> None:
    update = db_mtl(beta=0.0).combine(GRADS)
    torch.testing.assert_close(update, f64(3.0, 3.0))


def test_feature_level_averages_the_norms() -> None:
    # Per-sample gradients [T, B, D]: m = 0.1 ‖g‖ / L = (0.3, 0.2) at the first step, update = 0.3 Σ gᵢ/‖gᵢ‖;
    # then new samples with ‖g‖ / L = (1, 4): m = 0.9 (0.3, 0.2) + 0.1 (1, 4) = (0.37, 0.58).
    method = db_mtl()
    first = method.combine(GRADS[:, None, :], StepContext(losses=LOSSES, level="feature"))
    torch.testing.assert_close(first, torch.tensor([[0.3, 0.3]], dtype=torch.float64))
    batch = torch.tensor([[[0.0, 1.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    second = method.combine(batch, StepContext(losses=LOSSES, level="feature", step=1))
    torch.testing.assert_close(second, torch.tensor([[0.58, 0.58], [0.0, 0.0]], dtype=torch.float64))


def test_the_averages_need_a_fixed_shape() -> None:
    method = db_mtl()
    method.combine(GRADS, StepContext(step=0))
    with pytest.raises(ValueError, match="shape"):
        method.combine(torch.ones(2, 3, dtype=torch.float64), StepContext(step=1))


def test_row_norms_survive_overflow_and_underflow() -> None:
    rows = torch.tensor([[3e30, 4e30], [3e-30, 4e-30], [0.0, 0.0]])
    torch.testing.assert_close(row_norms(rows), torch.tensor([5e30, 5e-30, 0.0]))


@pytest.mark.parametrize(
    ("hparams", "argument"),
    [
        ({"beta": 1.0}, "beta"),
        ({"beta": -0.1}, "beta"),
        ({"beta_sigma": -1.0}, "beta_sigma"),
        ({"beta_sigma": math.inf}, "beta_sigma"),
    ],
)
def test_bad_hyperparameters_raise(hparams: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        db_mtl(**hparams)
