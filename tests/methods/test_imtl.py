"""IMTL-G, IMTL-L and their hybrid: equal projections, the golden matrix, TorchJD, learnable scales."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from benchmark.method import Composed, StepContext, get_method
from methods.imtl import imtl_g_weights


def f64(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def imtl_g(grads: Tensor) -> Tensor:
    return get_method("imtl_g", grads.shape[0]).combine(grads)


GOLDEN = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]


def test_golden_value_by_hand() -> None:
    # d = α g1 + (1 − α) g2 = (6 − 10α, 1, 1); equal projections on u1 = g1/√18, u2 = g2/√38:
    # (40α − 22)/√18 = (38 − 60α)/√38, so α = (√38 + 22/√18) / (40/√18 + 60/√38).
    alpha = (math.sqrt(38) + 22 / math.sqrt(18)) / (40 / math.sqrt(18) + 60 / math.sqrt(38))
    expected = f64([[6 - 10 * alpha, 1.0, 1.0]])[0]
    torch.testing.assert_close(imtl_g(f64(GOLDEN)), expected)
    torch.testing.assert_close(expected, f64([[0.0767, 1.0, 1.0]])[0], rtol=0, atol=1e-4)  # TorchJD's value


def test_equal_projections_on_unit_gradients() -> None:
    grads = torch.randn(4, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = grads * torch.tensor([[0.1], [1.0], [10.0], [3.0]], dtype=torch.float64)
    update = imtl_g(grads)
    projections = grads @ update / grads.norm(dim=1)
    torch.testing.assert_close(projections, projections.mean().expand(4))
    torch.testing.assert_close(imtl_g_weights(grads @ grads.T).sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("num_tasks", [2, 3, 5])
@pytest.mark.parametrize("num_params", [2, 40])
def test_matches_torchjd(num_tasks: int, num_params: int) -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        grads = torch.randn(num_tasks, num_params, generator=generator, dtype=torch.float64)
        torch.testing.assert_close(imtl_g(grads), aggregation.IMTLG()(grads), rtol=1e-6, atol=1e-9)


def test_degenerate_gradients() -> None:
    torch.testing.assert_close(imtl_g(f64([[3.0, 4.0]])), f64([[3.0, 4.0]])[0])  # T = 1
    opposite = imtl_g(f64([[1.0, 2.0], [-1.0, -2.0]]))  # Σ G⁺ d = 0
    torch.testing.assert_close(opposite, torch.zeros(2, dtype=torch.float64))
    # A zero gradient and a duplicate: the pseudo-inverse solution of the two distinct directions.
    with_zero = imtl_g(f64([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]]))
    torch.testing.assert_close(with_zero, imtl_g(f64([[1.0, 0.0], [0.0, 2.0]])))
    assert torch.isfinite(imtl_g(f64([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))).all()


def test_imtl_l_weights_and_scale_gradient() -> None:
    method = get_method("imtl_l", 3)
    losses = torch.tensor([2.0, 0.5, 1.0])
    torch.testing.assert_close(method.weights(losses, StepContext()), torch.ones(3))
    torch.testing.assert_close(method.scales.grad, losses - 1)  # exp(0) L − 1
    method.weights(losses, StepContext())
    torch.testing.assert_close(method.scales.grad, 2 * (losses - 1))  # accumulates


def test_imtl_l_scales_converge_to_balanced_losses() -> None:
    method = get_method("imtl_l", 3)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    losses = torch.tensor([4.0, 0.25, 1.0])
    for _ in range(300):
        optimizer.zero_grad()
        weights = method.weights(losses, StepContext())
        optimizer.step()
    torch.testing.assert_close(weights * losses, torch.ones(3), rtol=1e-3, atol=1e-3)  # exp(s) L = 1


def test_imtl_l_without_losses_is_finite() -> None:
    grads = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    update = get_method("imtl_l", 3).combine(grads, StepContext())
    torch.testing.assert_close(update, grads.sum(0))


def test_hybrid_is_imtl_g_on_scaled_gradients() -> None:
    method = get_method("imtl", 3)
    assert isinstance(method, Composed) and method.needs_grads
    grads = torch.randn(3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    losses = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    with torch.no_grad():
        method.weighting.scales.copy_(torch.tensor([0.0, 1.0, -2.0]))
    update = method.combine(grads, StepContext(losses=losses))
    factors = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64).exp()
    torch.testing.assert_close(update, imtl_g(grads * factors[:, None]))
    torch.testing.assert_close(method.weighting.scales.grad, (factors * losses - 1).float())
