"""Aligned-MTL: condition number one after alignment, the golden matrix, TorchJD, rank deficiency."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from benchmark.method import get_method
from methods.aligned_mtl import balance_transformation


def aligned(grads: Tensor, **hparams: object) -> Tensor:
    return get_method("aligned_mtl", grads.shape[0], **hparams).combine(grads)


def f64(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_aligned_gradients_have_equal_orthogonal_components() -> None:
    """Bᵀ J has the singular vectors of J and every singular value equal to the smallest one."""
    grads = torch.randn(4, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads[0] *= 20.0
    balance = balance_transformation(grads @ grads.T)
    aligned_grads = balance.T @ grads
    singular = torch.linalg.svdvals(grads)
    torch.testing.assert_close(torch.linalg.svdvals(aligned_grads), singular[-1].expand(4))


def test_orthogonal_gradients_are_scaled_to_the_smallest() -> None:
    # Orthogonal rows of norms 1, 2, 4: the aligned rows all have norm 1; the update is their sum.
    grads = f64([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 4.0]])
    torch.testing.assert_close(aligned(grads), f64([[1.0, 1.0, 1.0]])[0])


def test_golden_value_is_twice_torchjd() -> None:
    # TorchJD documents (0.2133, 0.9673, 0.9673) with weights 1/T; the authors' code sums (weights 1).
    grads = f64([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    torch.testing.assert_close(aligned(grads), 2 * f64([[0.2133, 0.9673, 0.9673]])[0], rtol=0, atol=2e-4)


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 10])
@pytest.mark.parametrize("num_params", [3, 40])
def test_matches_torchjd(num_tasks: int, num_params: int) -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        grads = torch.randn(num_tasks, num_params, generator=generator, dtype=torch.float64)
        expected = aggregation.AlignedMTL()(grads)
        update = aligned(grads, pref_vector=[1 / num_tasks] * num_tasks)
        torch.testing.assert_close(update, expected, rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(aligned(grads), num_tasks * expected, rtol=1e-7, atol=1e-10)


def test_rank_deficient_gradients_use_the_smallest_nonzero_component() -> None:
    # g3 = g1 + g2 with g1 ⊥ g2 of norms 1 and 2: J = U Σ Vᵀ has singular values sqrt(λ) of
    # G = [[1, 0, 1], [0, 4, 4], [1, 4, 5]]; the zero one drops out and the update stays finite.
    grads = f64([[1.0, 0.0], [0.0, 2.0], [1.0, 2.0]])
    update = aligned(grads)
    assert torch.isfinite(update).all()
    eigenvalues, vectors = torch.linalg.eigh(grads @ grads.T)
    kept = eigenvalues > 1e-9
    scales = (eigenvalues[kept].min() / eigenvalues[kept]).sqrt()
    expected = (vectors[:, kept] * scales) @ vectors[:, kept].T @ torch.ones(3, dtype=torch.float64) @ grads
    torch.testing.assert_close(update, expected)


def test_bad_preference_vector_raises() -> None:
    with pytest.raises(ValueError, match="aligned_mtl: pref_vector"):
        get_method("aligned_mtl", 3, pref_vector=[1.0, 2.0])
