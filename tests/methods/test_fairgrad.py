"""FairGrad: the α-fair equation G w = w^(−1/α), closed forms, scaling, and TorchJD."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from benchmark.method import get_method
from methods.fairgrad import fair_weights


def fairgrad(grads: Tensor, **hparams: object) -> Tensor:
    return get_method("fairgrad", num_tasks=grads.shape[0], **hparams).combine(grads)


def f64(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def random_jacobian(num_tasks: int, seed: int, dim: int = 10) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-1, 1, num_tasks, dtype=torch.float64)[:, None]  # imbalanced norms
    return scales * torch.randn(num_tasks, dim, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_orthogonal_gradients(alpha: float) -> None:
    # G = diag(4, 1): wᵢ Gᵢᵢ = wᵢ^(−1/α) gives wᵢ = Gᵢᵢ^(−α/(1+α)), so d = (2 · 4^(−α/(1+α)), 1).
    grads = f64([[2, 0], [0, 1]])
    expected = f64([[2 * 4 ** (-alpha / (1 + alpha)), 1]])[0]
    torch.testing.assert_close(fairgrad(grads, alpha=alpha), expected)


def test_golden_value() -> None:
    # α = 1, G = [[18, −22], [−22, 38]]: G₁₁a² + G₁₂ab = 1 = G₁₂ab + G₂₂b² gives 18a² = 38b², so
    # a = b √(19/9) and b² (38 − 22 √(19/9)) = 1: (a, b) ≈ (0.5915, 0.4071), d = a g₁ + b g₂.
    grads = f64([[-4, 1, 1], [6, 1, 1]])
    b = 1 / math.sqrt(38 - 22 * math.sqrt(19 / 9))
    a = b * math.sqrt(19 / 9)
    torch.testing.assert_close(fair_weights(grads @ grads.T, 1.0), f64([[a, b]])[0])
    torch.testing.assert_close(fairgrad(grads), a * grads[0] + b * grads[1])


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("seed", range(3))
def test_solves_the_fairness_equation(alpha: float, seed: int) -> None:
    grads = random_jacobian(2 + 3 * seed, seed)
    w = fair_weights(grads @ grads.T, alpha)
    target = w.pow(-1 / alpha)
    torch.testing.assert_close(grads @ grads.T @ w, target, rtol=1e-9, atol=0)
    assert (grads @ (w @ grads) > 0).all()  # gᵢᵀd = wᵢ^(−1/α) > 0: every task improves


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_matches_torchjd(alpha: float) -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    pytest.importorskip("scipy")
    for seed in range(3):
        grads = random_jacobian(2 + seed, seed)
        expected = aggregation.FairGrad(alpha=alpha)(grads)
        torch.testing.assert_close(fairgrad(grads, alpha=alpha), expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_scaling(alpha: float) -> None:
    # s²G w' = w'^(−1/α) is solved by w' = s^(−2α/(1+α)) w, so d(sJ) = s^((1−α)/(1+α)) d(J).
    grads = random_jacobian(4, 7)
    for scale in (1e-3, 10.0):
        expected = scale ** ((1 - alpha) / (1 + alpha)) * fairgrad(grads, alpha=alpha)
        torch.testing.assert_close(fairgrad(scale * grads, alpha=alpha), expected)


def test_zero_gradient_is_ignored() -> None:
    # A zero row has no solution (its weight grows to the bound) but contributes nothing: the others
    # get the weights they would get alone.
    grads = random_jacobian(3, 2)
    with_zero = torch.cat([grads, torch.zeros(1, grads.shape[1], dtype=torch.float64)])
    torch.testing.assert_close(fairgrad(with_zero), fairgrad(grads))


@pytest.mark.parametrize(
    ("hparams", "argument"),
    [({"alpha": 0.0}, "alpha"), ({"alpha": math.nan}, "alpha"), ({"max_iter": 0}, "max_iter")],
)
def test_bad_hyperparameters_raise(hparams: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=f"fairgrad: {argument}"):
        get_method("fairgrad", num_tasks=3, **hparams)
