"""The batched dual-cone solver: optimality conditions, TorchJD's quadprog values, degenerate Gramians."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from methods._dual_cone import pivot, project_weights, solve_on_free_sets


def jacobian(num_tasks: int, num_params: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-1, 1, num_tasks, dtype=torch.float64)[:, None]  # imbalanced norms
    return scales * torch.randn(num_tasks, num_params, generator=generator, dtype=torch.float64)


def assert_optimal(gramian: Tensor, targets: Tensor, weights: Tensor, tol: float = 1e-9) -> None:
    """KKT conditions of min vᵀ G v s.t. v ≥ u, which characterise the projection Jᵀ v uniquely:
    v ≥ u, G v ≥ 0, and (v − u)ᵢ (G v)ᵢ = 0; tolerances relative to trace(G) and the sizes of v."""
    matrix = gramian / gramian.diagonal().sum()
    products = weights @ matrix
    size = weights.abs().amax(1, keepdim=True)
    assert (weights - targets >= -tol * size).all()
    assert (products >= -tol * size).all()
    assert ((weights - targets) * products).abs().max() <= tol * size.max() ** 2


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 10])
@pytest.mark.parametrize("num_params", [1, 3, 8, 50])
@pytest.mark.parametrize("seed", range(2))
def test_upgrad_programs_are_solved_exactly(num_tasks: int, num_params: int, seed: int) -> None:
    grads = jacobian(num_tasks, num_params, seed)
    gramian = grads @ grads.T
    targets = torch.eye(num_tasks, dtype=torch.float64)
    assert_optimal(gramian, targets, project_weights(gramian, targets))


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 10])
@pytest.mark.parametrize("num_params", [3, 50])
def test_matches_torchjd_quadprog(num_tasks: int, num_params: int) -> None:
    """TorchJD solves min vᵀ (G / tr G + 1e-4 I) v, v ≥ u with quadprog; reg_eps=1e-4 is that program."""
    linalg = pytest.importorskip("torchjd._linalg")
    for seed in range(3):
        grads = jacobian(num_tasks, num_params, seed)
        gramian = grads @ grads.T
        targets = torch.eye(num_tasks, dtype=torch.float64)
        expected = linalg.QuadprogProjector()(targets, gramian)
        torch.testing.assert_close(project_weights(gramian, targets, 1e-4), expected, rtol=1e-8, atol=1e-10)


def test_two_conflicting_gradients_by_hand() -> None:
    # g1 = (1, 0), g2 = (−1, 1): g1 projects onto g2⊥ as g1 + g2 / 2 (v = (1, 1/2)); g2 projects onto
    # g1⊥ as g2 + g1 (v = (1, 1)).
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    weights = project_weights(grads @ grads.T, torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(weights, torch.tensor([[1.0, 0.5], [1.0, 1.0]], dtype=torch.float64))


def test_targets_already_in_the_cone_are_kept() -> None:
    grads = torch.tensor([[1.0, 0.2], [0.3, 1.0], [0.5, 0.5]], dtype=torch.float64)
    targets = torch.rand(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(project_weights(grads @ grads.T, targets), targets, rtol=1e-15, atol=0)


@pytest.mark.parametrize(
    "rows",
    [
        [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]],  # identical
        [[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]],  # opposite
        [[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0], [0.5, -1.0, 2.0]],
        [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-2.0, 1.0, 0.0]],  # a zero gradient
    ],
)
def test_degenerate_gramians(rows: list[list[float]]) -> None:
    grads = torch.tensor(rows, dtype=torch.float64)
    gramian = grads @ grads.T
    targets = torch.eye(len(rows), dtype=torch.float64)
    weights = project_weights(gramian, targets)
    assert torch.isfinite(weights).all()
    assert_optimal(gramian, targets, weights)


def test_zero_gramian_keeps_the_targets() -> None:
    targets = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(project_weights(torch.zeros(3, 3), targets), targets, rtol=1e-15, atol=0)


def test_scale_of_the_gramian_does_not_matter() -> None:
    grads = jacobian(6, 4, 0)
    targets = torch.eye(6, dtype=torch.float64)
    expected = project_weights(grads @ grads.T, targets)
    for scale in (1e-12, 1e12):
        torch.testing.assert_close(project_weights(scale * (grads @ grads.T), targets), expected)


def test_rows_are_independent_problems() -> None:
    grads = jacobian(5, 3, 1)
    gramian = grads @ grads.T
    targets = torch.rand(4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    together = project_weights(gramian, targets)
    alone = torch.cat([project_weights(gramian, row[None]) for row in targets])
    torch.testing.assert_close(together, alone)


def test_pivoting_reports_unsolved_rows_when_out_of_steps() -> None:
    grads = jacobian(8, 20, 2)
    gramian = grads @ grads.T / (grads @ grads.T).trace()
    targets = torch.eye(8, dtype=torch.float64)
    free = torch.zeros(8, 8, dtype=torch.bool)
    _, _, unsolved = pivot(gramian, targets, free, max_iter=0)
    assert unsolved.any()
    slack, free, unsolved = pivot(gramian, targets, free)
    assert not unsolved.any()
    assert_optimal(gramian, targets, targets + slack)


def test_solve_on_free_sets_by_hand() -> None:
    gramian = torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    products = torch.tensor([[3.0, 3.0, 5.0], [3.0, 3.0, 5.0]], dtype=torch.float64)
    free = torch.tensor([[True, True, False], [False, False, True]])
    # row 0: [[2, 1], [1, 2]] w = −(3, 3) -> w = (−1, −1); row 1: 1 w = −5
    expected = torch.tensor([[-1.0, -1.0, 0.0], [0.0, 0.0, -5.0]], dtype=torch.float64)
    torch.testing.assert_close(solve_on_free_sets(gramian, products, free), expected)
