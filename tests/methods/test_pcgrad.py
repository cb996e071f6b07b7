"""PCGrad: hand-computed cases and agreement with a direct transcription of Algorithm 1."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from benchmark.method import StepContext, get_method
from methods.pcgrad import random_task_orders


def pcgrad(grads: Tensor, seed: int = 0) -> Tensor:
    ctx = StepContext(generator=torch.Generator().manual_seed(seed))
    return get_method("pcgrad", num_tasks=grads.shape[0]).combine(grads, ctx)


def naive_pcgrad(grads: Tensor, orders: Tensor) -> Tensor:
    """Algorithm 1 as written: task i projects on g_j, j in ``orders[i]``, when they conflict."""
    projected = []
    for i in range(grads.shape[0]):
        g = grads[i].clone()
        for j in orders[i].tolist():
            dot = torch.dot(g, grads[j])
            if dot < 0:
                g = g - dot / grads[j].dot(grads[j]) * grads[j]
        projected.append(g)
    return torch.stack(projected).sum(0)


def test_two_conflicting_tasks_by_hand() -> None:
    # g1·g2 = -1: g1 -> g1 + g2/2 = (1/2, 1/2); g2 -> g2 + g1 = (0, 1); the sum is (1/2, 3/2).
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(pcgrad(grads), torch.tensor([0.5, 1.5], dtype=torch.float64))


def test_non_conflicting_gradients_are_summed() -> None:
    grads = torch.tensor([[1.0, 2.0, 0.0], [2.0, 1.0, 1.0], [0.5, 0.5, 3.0]], dtype=torch.float64)
    assert (grads @ grads.T).min() > 0
    torch.testing.assert_close(pcgrad(grads), grads.sum(0))


def test_orthogonal_gradients_are_unchanged() -> None:
    grads = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(pcgrad(grads), grads.sum(0))


@pytest.mark.parametrize("seed", range(6))
def test_matches_algorithm_1_with_the_same_orders(seed: int) -> None:
    grads = torch.randn(3, 5, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    orders = random_task_orders(3, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(pcgrad(grads, seed), naive_pcgrad(grads, orders))


def test_order_matters_and_is_drawn_per_task() -> None:
    # Three mutually conflicting gradients: the result depends on each task's order.
    grads = torch.tensor([[1.0, 0.1], [-0.6, 1.0], [-0.5, -1.0]], dtype=torch.float64)
    results = {tuple(pcgrad(grads, seed).tolist()) for seed in range(20)}
    assert len(results) > 1


def test_random_task_orders_are_permutations_of_the_other_tasks() -> None:
    orders = random_task_orders(5, torch.Generator().manual_seed(0))
    assert orders.shape == (5, 4)
    for i, row in enumerate(orders.tolist()):
        assert sorted(row) == [j for j in range(5) if j != i]


def test_zero_gradient_is_skipped() -> None:
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(pcgrad(grads), torch.tensor([0.5, 1.5], dtype=torch.float64))


def test_matches_torchjd_pcgrad_on_two_tasks() -> None:
    """With two tasks every order is the same, so the random orders cannot differ."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    for seed in range(5):
        grads = torch.randn(2, 30, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        expected = aggregation.PCGrad()(grads)
        torch.testing.assert_close(get_method("pcgrad", num_tasks=2).combine(grads), expected)
