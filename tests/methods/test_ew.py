"""Equal weighting: the sum of the gradients, and unit weights for the one-backward path."""

from __future__ import annotations

import pytest
import torch

from benchmark.method import StepContext, get_method


def test_update_is_the_sum_of_the_gradients() -> None:
    grads = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(get_method("ew", num_tasks=3).combine(grads), grads.sum(0))


def test_weights_are_ones() -> None:
    losses = torch.tensor([0.5, 2.0, 7.0])
    weights = get_method("ew", num_tasks=3).weights(losses, StepContext(losses=losses))
    assert torch.equal(weights, torch.ones(3))


def test_matches_torchjd_sum() -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    grads = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(get_method("ew", num_tasks=2).combine(grads), aggregation.Sum()(grads))
