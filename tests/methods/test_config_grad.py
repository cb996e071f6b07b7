"""ConFIG: the equal-cosine direction by hand, the golden matrix, TorchJD's ConFIG, degenerate rows."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from benchmark.method import get_method


def config(grads: Tensor) -> Tensor:
    return get_method("config", grads.shape[0]).combine(grads)


def f64(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_two_gradients_follow_the_bisector() -> None:
    # With two gradients the direction of equal cosine in their span is u1 + u2, and the length is
    # (g1 + g2) · x̂. On the golden matrix this is (0.1588, 2.0706, 2.0706), TorchJD's value.
    grads = f64([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    units = grads / grads.norm(dim=1, keepdim=True)
    direction = (units[0] + units[1]) / (units[0] + units[1]).norm()
    expected = grads.sum(0).dot(direction) * direction
    torch.testing.assert_close(config(grads), expected)
    torch.testing.assert_close(expected, f64([[0.1588, 2.0706, 2.0706]])[0], rtol=0, atol=1e-4)


def test_equal_cosines_with_every_gradient() -> None:
    grads = torch.randn(4, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = grads * torch.tensor([[0.01], [1.0], [10.0], [3.0]], dtype=torch.float64)
    update = config(grads)
    cosines = grads @ update / (grads.norm(dim=1) * update.norm())
    torch.testing.assert_close(cosines, cosines.mean().expand(4))
    assert (cosines > 0).all()
    torch.testing.assert_close(update.norm(), (grads @ update / update.norm()).sum())


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 10])
@pytest.mark.parametrize("num_params", [20, 200])
def test_matches_torchjd(num_tasks: int, num_params: int) -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        scales = torch.logspace(-1, 1, num_tasks, dtype=torch.float64)[:, None]
        grads = scales * torch.randn(num_tasks, num_params, generator=generator, dtype=torch.float64)
        torch.testing.assert_close(config(grads), aggregation.ConFIG()(grads), rtol=1e-7, atol=1e-10)


def test_single_gradient_is_kept() -> None:
    grads = f64([[3.0, -4.0]])
    torch.testing.assert_close(config(grads), grads[0])


def test_zero_gradient_is_ignored() -> None:
    # As with g1 and g3 alone: the bisector (1, 1, 0) / √2, of length (g1 + g3) · x̂ = 3 / √2.
    grads = f64([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    torch.testing.assert_close(config(grads), f64([[1.5, 1.5, 0.0]])[0])


def test_opposite_gradients_give_zero() -> None:
    grads = f64([[1.0, 2.0], [-3.0, -6.0]])
    torch.testing.assert_close(config(grads), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("factors", [[1.0, -1.0, 1.0, -1.0], [1.0, -3.0, 2.0]])
def test_opposite_gradients_give_zero_in_both_dtypes(dtype: torch.dtype, factors: list[float]) -> None:
    # The unit gradients are ±u: 1 is orthogonal to their span, so U⁺ 1 = 0 and the update is 0. A
    # float32 Gramian's rounding (1e-7) must be cut, not inverted into a NaN.
    row = torch.tensor([1.1, 2.3, 0.7], dtype=dtype)
    grads = torch.tensor(factors, dtype=dtype)[:, None] * row
    atol = 100 * torch.finfo(dtype).eps * row.norm()
    torch.testing.assert_close(config(grads), torch.zeros(3, dtype=dtype), rtol=0, atol=atol)
