"""Random loss weighting: seeded draws on the simplex for both distributions, and validation."""

from __future__ import annotations

import pytest
import torch

from benchmark.method import StepContext, get_method


def weights(
    distribution: str, seed: int, num_tasks: int = 4, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    ctx = StepContext(generator=torch.Generator().manual_seed(seed))
    method = get_method("rlw", num_tasks=num_tasks, distribution=distribution)
    return method.weights(torch.ones(num_tasks, dtype=dtype), ctx)


def test_normal_is_the_softmax_of_seeded_gaussian_draws() -> None:
    draws = torch.randn(4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(weights("normal", 7), torch.softmax(draws, dim=0))


def test_dirichlet_normalises_seeded_exponential_draws() -> None:
    draws = torch.empty(4, dtype=torch.float64).exponential_(generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(weights("dirichlet", 7), draws / draws.sum())


@pytest.mark.parametrize("distribution", ["normal", "dirichlet"])
def test_weights_lie_on_the_simplex_and_vary_between_steps(distribution: str) -> None:
    method = get_method("rlw", num_tasks=3, distribution=distribution)
    ctx = StepContext(generator=torch.Generator().manual_seed(0))
    draws = torch.stack([method.weights(torch.ones(3), ctx) for _ in range(2000)])
    assert (draws >= 0).all() and draws.dtype == torch.float32
    torch.testing.assert_close(draws.sum(1), torch.ones(2000))
    assert not torch.equal(draws[0], draws[1])
    torch.testing.assert_close(draws.mean(0), torch.full((3,), 1 / 3), atol=0.02, rtol=0)  # exchangeable


@pytest.mark.parametrize("distribution", ["normal", "dirichlet"])
def test_same_seed_same_weights(distribution: str) -> None:
    assert torch.equal(weights(distribution, 3), weights(distribution, 3))
    assert not torch.equal(weights(distribution, 3), weights(distribution, 4))


def test_works_without_a_generator() -> None:
    sample = get_method("rlw", num_tasks=2).weights(torch.ones(2))
    torch.testing.assert_close(sample.sum(), torch.tensor(1.0))


def test_dirichlet_weights_of_one_task_are_one() -> None:
    assert torch.equal(weights("dirichlet", 0, num_tasks=1), torch.ones(1, dtype=torch.float64))


def test_bad_distribution_raises() -> None:
    with pytest.raises(ValueError, match="rlw: distribution must be one of"):
        get_method("rlw", num_tasks=2, distribution="uniform")
