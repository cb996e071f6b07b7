"""Fixed weights: the weighted sum of the gradients, defaults and validation of ``weights``."""

from __future__ import annotations

import pytest
import torch

from benchmark.method import get_method


def test_update_is_the_weighted_sum() -> None:
    grads = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]], dtype=torch.float64)
    update = get_method("fixed", num_tasks=3, weights=[0.1, 2, -1.0]).combine(grads)
    torch.testing.assert_close(update, torch.tensor([5.6, -2.3], dtype=torch.float64))


def test_default_is_equal_weighting() -> None:
    losses = torch.tensor([0.5, 2.0])
    assert torch.equal(get_method("fixed", num_tasks=2).weights(losses), torch.ones(2))


def test_weights_follow_the_losses_dtype() -> None:
    method = get_method("fixed", num_tasks=2, weights=[0.1, 0.9])
    weights = method.weights(torch.zeros(2, dtype=torch.float64))
    assert weights.dtype == torch.float64 and weights[0].item() == 0.1


BAD_WEIGHTS = [[1.0], [1.0, 2.0, 3.0, 4.0], [1.0, float("inf"), 1.0], ["a", 1, 1], True]


@pytest.mark.parametrize("weights", BAD_WEIGHTS)
def test_bad_weights_raise(weights: object) -> None:
    with pytest.raises(ValueError, match="weights"):
        get_method("fixed", num_tasks=3, weights=weights)


def test_matches_torchjd_constant() -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    grads = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
    weights = torch.tensor([0.25, 2.0], dtype=torch.float64)
    expected = aggregation.Constant(weights)(grads)
    update = get_method("fixed", num_tasks=2, weights=weights.tolist()).combine(grads)
    torch.testing.assert_close(update, expected)
