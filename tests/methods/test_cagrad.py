"""CAGrad: closed-form cases, the optimality certificate of the solver, TorchJD, and c ≥ 1."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from benchmark.method import get_method
from methods.cagrad import conflict_averse_weights


def cagrad(grads: Tensor, **hparams: object) -> Tensor:
    return get_method("cagrad", num_tasks=grads.shape[0], **hparams).combine(grads)


def f64(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def random_jacobian(num_tasks: int, seed: int, dim: int = 12) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    shared = (seed % 3) * torch.randn(1, dim, generator=generator, dtype=torch.float64)
    return torch.randn(num_tasks, dim, generator=generator, dtype=torch.float64) + shared


def test_orthonormal_gradients() -> None:
    # By symmetry w = (1/2, 1/2), so g_w = g₀ and d = (1 + c) g₀; times T = 2, over 1 + c².
    expected = torch.full((2,), 1.4 / 1.16, dtype=torch.float64)
    torch.testing.assert_close(cagrad(torch.eye(2, dtype=torch.float64)), expected)


def test_golden_value() -> None:
    # g₀ = (1, 1, 1). On w = (1 − t, t): F(t) = 10t − 2 + 0.4√3 √((10t − 4)² + 2) has
    # F'(t) = 10 + 4√3 (10t − 4)/√((10t − 4)² + 2) > 10 − 4√3 > 0, so w = (1, 0) and
    # d = g₀ + 0.4 √3 g₁/‖g₁‖ = g₀ + (0.4/√6) (−4, 1, 1); the update is 2 d / 1.16.
    grads = f64([[-4, 1, 1], [6, 1, 1]])
    step = 0.4 / math.sqrt(6)
    expected = f64([[1 - 4 * step, 1 + step, 1 + step]])[0] * (2 / 1.16)
    torch.testing.assert_close(cagrad(grads), expected)


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 10, 40])
@pytest.mark.parametrize("seed", range(3))
def test_solver_optimality_certificate(num_tasks: int, seed: int) -> None:
    # Strong duality: at the optimum, min_i g_iᵀd = Σ w_i g_iᵀd (every supported task is a worst one)
    # and d lies on the sphere ‖d − g₀‖ = c ‖g₀‖.
    grads = random_jacobian(num_tasks, seed, dim=50)
    gramian = grads @ grads.T
    w = conflict_averse_weights(gramian / gramian.diagonal().max(), 0.4)
    assert w.min() >= 0
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    mean = grads.mean(0)
    direction = mean + 0.4 * mean.norm() * (w @ grads) / (w @ grads).norm()
    worst, average = (grads @ direction).min(), w @ grads @ direction
    assert average - worst <= 1e-9 * grads.norm(dim=1).max() * direction.norm()
    update = cagrad(grads, rescale=0) / num_tasks
    torch.testing.assert_close(update, direction)


@pytest.mark.parametrize("seed", range(6))
def test_matches_torchjd(seed: int) -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    pytest.importorskip("cvxpy")
    grads = random_jacobian(2 + seed % 4, seed)
    # TorchJD's update is g₀ + ...: the mean-gradient scale, no rescaling. Its solver (CLARABEL) is the
    # less accurate one here (relative error ~1e-4; ours attains a higher min_i g_iᵀd in the same ball).
    expected = aggregation.CAGrad(c=0.5)(grads) * grads.shape[0]
    ours = cagrad(grads, c=0.5, rescale=0)
    torch.testing.assert_close(ours, expected, rtol=5e-4, atol=5e-4 * expected.norm().item())
    assert (grads @ ours).min() >= (grads @ expected).min() - 1e-9


@pytest.mark.parametrize("c", [1.0, 2.0])
@pytest.mark.parametrize("seed", range(4))
def test_no_conflict_when_c_at_least_one(c: float, seed: int) -> None:
    # The ball ‖d − g₀‖ ≤ c ‖g₀‖ holds d = 0, so the max-min is ≥ 0 (paper §3); full row rank here.
    grads = random_jacobian(3 + seed, seed, dim=20)
    update = cagrad(grads, c=c)
    assert (grads @ update).min() >= -1e-9 * grads.norm(dim=1).max() * update.norm()


def test_c_zero_is_the_sum() -> None:
    grads = random_jacobian(4, 0)
    torch.testing.assert_close(cagrad(grads, c=0.0), grads.sum(0))


def test_rescale_options() -> None:
    grads = random_jacobian(3, 1)
    plain = cagrad(grads, c=0.5, rescale=0)
    torch.testing.assert_close(cagrad(grads, c=0.5, rescale=1), plain / 1.25)
    torch.testing.assert_close(cagrad(grads, c=0.5, rescale=2), plain / 1.5)


def test_zero_gradient_in_the_hull_stays_in_the_ball() -> None:
    # g₂ = 0: the optimum is w = e₂ with g_w = 0; the update still satisfies ‖d − g₀‖ ≤ c ‖g₀‖.
    grads = f64([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    update = cagrad(grads, rescale=0) / 2
    mean = grads.mean(0)
    assert torch.isfinite(update).all()
    assert (update - mean).norm() <= 0.4 * mean.norm() * (1 + 1e-9)


@pytest.mark.parametrize(
    ("hparams", "argument"),
    [({"c": -0.1}, "c"), ({"c": math.inf}, "c"), ({"rescale": 3}, "rescale"), ({"max_iter": 0}, "max_iter")],
)
def test_bad_hyperparameters_raise(hparams: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=f"cagrad: {argument}"):
        get_method("cagrad", num_tasks=3, **hparams)
