"""The linear heads' factored per-task gradients (``benchmark/factored.py``) against the dense ones."""

from __future__ import annotations

import pytest
import torch

from benchmark.factored import FactoredGradients, dense, gramian, weighted_sum


def _factors(rows: tuple[int, ...], outputs: int, num_tasks: int = 4, width: int = 5) -> FactoredGradients:
    generator = torch.Generator().manual_seed(0)
    coefficients = torch.randn(num_tasks, *rows, outputs, generator=generator, dtype=torch.float64)
    weights = torch.randn(num_tasks, outputs, width, generator=generator, dtype=torch.float64)
    return FactoredGradients(coefficients, weights)


def test_hand_computed_rank_one_gradients_and_their_sums() -> None:
    """Two heads of one output on z [2, 2]: ∇_z Lᵢ = cᵢ wᵢᵀ."""
    coefficients = torch.tensor([[[1.0], [-2.0]], [[3.0], [0.5]]])  # [T=2, M=2, k=1]
    weights = torch.tensor([[[1.0, -1.0]], [[2.0, 4.0]]])  # [T=2, k=1, D=2]
    grads = FactoredGradients(coefficients, weights)
    first, second = torch.tensor([[1.0, -1.0], [-2.0, 2.0]]), torch.tensor([[6.0, 12.0], [1.0, 2.0]])
    torch.testing.assert_close(grads.dense(), torch.stack([first, second]))
    assert (grads.shape, grads.dim(), grads.rank_one) == (torch.Size([2, 2, 2]), 3, True)
    # G₀₀ = ‖c₀‖²‖w₀‖² = 5 · 2, G₀₁ = (c₀·c₁)(w₀·w₁) = 2 · (−2), G₁₁ = 9.25 · 20
    torch.testing.assert_close(grads.gramian(), torch.tensor([[10.0, -4.0], [-4.0, 185.0]]))
    torch.testing.assert_close(grads.weighted_sum(torch.tensor([1.0, 0.5])), first + 0.5 * second)
    sums, positive = grads.sign_sums(torch.tensor([[1.0, 1.0]]))
    torch.testing.assert_close(sums, (first + second).reshape(1, -1))
    torch.testing.assert_close(positive, torch.tensor([[7.0, 12.0, 1.0, 4.0]]))


@pytest.mark.parametrize("outputs", [1, 3])
@pytest.mark.parametrize("rows", [(6,), (3, 2)])
def test_gramian_and_weighted_sum_equal_the_dense_ones(rows: tuple[int, ...], outputs: int) -> None:
    grads = _factors(rows, outputs)
    matrix = grads.dense()
    assert matrix.shape == (4, *rows, 5) == grads.shape
    torch.testing.assert_close(grads.gramian(), gramian(matrix))
    weights = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(grads.weighted_sum(weights), weighted_sum(weights, matrix))
    torch.testing.assert_close(dense(grads), matrix)


def test_sign_sums_equal_the_dense_sums_of_the_positive_parts() -> None:
    """``max(c w, 0) = c⁺ w⁺ + c⁻ w⁻``: exact per term, so only the summation order differs; any real
    row weights (negative ones too)."""
    grads = _factors((3, 2), 1)
    matrix = grads.dense().flatten(1)
    rows = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.2, -1.5, 0.0, 3.0]], dtype=torch.float64)
    sums, positive = grads.sign_sums(rows)
    torch.testing.assert_close(sums, rows @ matrix)
    torch.testing.assert_close(positive, rows @ matrix.clamp_min(0))


def test_sign_sums_need_one_output_per_head() -> None:
    with pytest.raises(ValueError, match="one output per head, the heads have 3"):
        _factors((2,), 3).sign_sums(torch.ones(1, 4, dtype=torch.float64))


def test_zero_coefficients_give_zero_gradients() -> None:
    grads = FactoredGradients(torch.zeros(3, 4, 1), torch.randn(3, 1, 2))
    assert not grads.dense().any() and not grads.gramian().any()
    assert not torch.cat(grads.sign_sums(torch.ones(2, 3))).any()


def test_float_casts_both_factors() -> None:
    half = torch.bfloat16
    grads = FactoredGradients(torch.ones(2, 3, 1, dtype=half), torch.ones(2, 1, 4, dtype=half))
    assert grads.float().dtype == grads.float().weights.dtype == torch.float32


def test_mismatched_factors_are_refused() -> None:
    with pytest.raises(ValueError, match=r"coefficients \(2, 3, 2\) do not match head weights \(2, 1, 4\)"):
        FactoredGradients(torch.ones(2, 3, 2), torch.ones(2, 1, 4))


def test_dense_helpers_keep_the_dense_expressions() -> None:
    """On a tensor the helpers are the expressions the methods used before (bit for bit)."""
    matrix = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1))
    flat = matrix.flatten(1)
    weights = torch.tensor([0.3, -0.7, 1.1])
    assert torch.equal(gramian(matrix), flat @ flat.T)
    assert torch.equal(weighted_sum(weights, matrix), (weights @ flat).view(4, 5))
    assert dense(matrix) is matrix
