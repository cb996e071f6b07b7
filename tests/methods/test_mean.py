"""Mean: the golden value, one backward of the mean loss, and TorchJD's Mean."""

from __future__ import annotations

import pytest
import torch

from benchmark.method import StepContext, get_method


def test_golden_value() -> None:
    grads = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
    update = get_method("mean", 2).combine(grads)
    torch.testing.assert_close(update, torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))


def test_is_a_loss_weighting_of_one_over_t() -> None:
    method = get_method("mean", 4)
    assert not method.needs_grads
    weights = method.weights(torch.tensor([1.0, 5.0, 0.0, 2.0]), StepContext())
    torch.testing.assert_close(weights, torch.full((4,), 0.25))


def test_matches_torchjd() -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    grads = torch.randn(5, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(get_method("mean", 5).combine(grads), aggregation.Mean()(grads))
