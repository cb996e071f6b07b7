"""The sort-based Euclidean projection onto the simplex: hand values, the KKT conditions, batching."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from methods._simplex import project_onto_simplex, uniform


def f64(values: list[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]),  # on the simplex already
        ([0.5, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]),  # shifted down by 1/6
        ([2.0, 0.0], [1.0, 0.0]),  # θ = 1: the second entry is cut off
        ([1.0, 0.5], [0.75, 0.25]),  # θ = 1/4
        ([-1.0, -2.0, -5.0], [1.0, 0.0, 0.0]),  # θ = −2: one vertex
        ([1e30, 0.0, -1e30], [1.0, 0.0, 0.0]),  # huge values do not swallow the 1
    ],
)
def test_hand_values(values: list[float], expected: list[float]) -> None:
    torch.testing.assert_close(project_onto_simplex(f64(values)), f64(expected))


@pytest.mark.parametrize("seed", range(5))
def test_kkt_conditions(seed: int) -> None:
    # w = max(v − θ, 0) with Σ w = 1 characterises the projection: v − w = θ on the support, ≤ θ off it.
    values = 3 * torch.randn(9, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w = project_onto_simplex(values)
    assert w.min() >= 0
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    support = w > 0
    theta = (values - w)[support]
    torch.testing.assert_close(theta, theta.mean().expand_as(theta))
    assert ((values - w)[~support] <= theta.mean() + 1e-12).all()


def test_matches_torchjd() -> None:
    simplex = pytest.importorskip("torchjd.aggregation._utils.simplex")
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        values = torch.randn(6, generator=generator, dtype=torch.float64)
        torch.testing.assert_close(project_onto_simplex(values), simplex.project_onto_simplex(values))


def test_batched_over_leading_dims() -> None:
    values = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = torch.stack([torch.stack([project_onto_simplex(row) for row in block]) for block in values])
    torch.testing.assert_close(project_onto_simplex(values), expected)


def test_float32_and_uniform() -> None:
    assert project_onto_simplex(torch.tensor([3.0, 1.0])).dtype == torch.float32
    torch.testing.assert_close(uniform(4), torch.full((4,), 0.25, dtype=torch.float64))
