"""Trimmed mean: values by hand, ties, outliers far beyond the kept values, TorchJD, the cap on k."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from benchmark.method import get_method
from methods.trimmed_mean import order_statistics


def trimmed(grads: Tensor, **hparams: object) -> Tensor:
    return get_method("trimmed_mean", grads.shape[0], **hparams).combine(grads)


def f64(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def sorted_reference(grads: Tensor, trim: int) -> Tensor:
    return grads.sort(0).values[trim : len(grads) - trim].mean(0)


def test_values_by_hand() -> None:
    # Column 1: 1, 2, 3, 4, 100 -> 2, 3, 4; column 2: −5, 0, 0, 1, 9 -> 0, 0, 1.
    grads = f64([[1.0, 0.0], [100.0, -5.0], [3.0, 9.0], [2.0, 0.0], [4.0, 1.0]])
    torch.testing.assert_close(trimmed(grads), f64([[3.0, 1 / 3]])[0])
    torch.testing.assert_close(trimmed(grads, trim_number=2), f64([[3.0, 0.0]])[0])  # the median
    torch.testing.assert_close(trimmed(grads, trim_number=0), grads.mean(0))


def test_torchjd_documented_example_in_float32() -> None:
    # The outliers are 1e11: subtracting them from a float32 sum would lose the kept values.
    grads = torch.tensor([[1e11, 3.0], [1.0, -1e11], [-1e10, 1e10], [2.0, 2.0]])
    torch.testing.assert_close(trimmed(grads), torch.tensor([1.5, 2.5]))


def test_ties_at_the_cut() -> None:
    grads = f64([[1.0], [1.0], [1.0], [5.0], [5.0], [0.0]])
    for trim in range(3):
        torch.testing.assert_close(trimmed(grads, trim_number=trim), sorted_reference(grads, trim))


@pytest.mark.parametrize("num_tasks", [3, 4, 7, 12])
def test_matches_sorting_and_torchjd(num_tasks: int) -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    generator = torch.Generator().manual_seed(num_tasks)
    grads = torch.randint(-3, 4, (num_tasks, 60), generator=generator).double()  # many ties
    grads[:, 30:] = torch.randn(num_tasks, 30, generator=generator, dtype=torch.float64)
    for trim in range((num_tasks - 1) // 2 + 1):
        expected = aggregation.TrimmedMean(trim)(grads)
        torch.testing.assert_close(trimmed(grads, trim_number=trim), expected)
        torch.testing.assert_close(expected, sorted_reference(grads, trim))


def test_order_statistics_by_hand() -> None:
    block = f64([[3.0, 0.0], [1.0, 0.0], [2.0, 7.0], [5.0, -1.0]])
    low, high = order_statistics(block, 2)
    torch.testing.assert_close(low, f64([[2.0, 0.0]])[0])
    torch.testing.assert_close(high, f64([[3.0, 0.0]])[0])


def test_trim_is_capped_so_that_one_entry_remains() -> None:
    grads = f64([[1.0, 2.0], [5.0, -1.0], [2.0, 0.0]])
    torch.testing.assert_close(trimmed(grads, trim_number=10), f64([[2.0, 0.0]])[0])  # the median
    two = f64([[1.0, 2.0], [5.0, -1.0]])
    torch.testing.assert_close(trimmed(two), two.mean(0))


def test_bad_hyperparameters_raise() -> None:
    for value in (-1, 1.5):
        with pytest.raises(ValueError, match="trimmed_mean: trim_number"):
            get_method("trimmed_mean", 4, trim_number=value)
