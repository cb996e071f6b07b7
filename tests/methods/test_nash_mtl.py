"""Nash-MTL: the bargaining equation G α = 1/α, closed forms, clipping, reuse of α, and TorchJD."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from benchmark.method import StepContext, get_method
from methods.fairgrad import fair_weights


def nash(grads: Tensor, **hparams: object) -> Tensor:
    return get_method("nash_mtl", num_tasks=grads.shape[0], **hparams).combine(grads)


def f64(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def two_task_solution(gramian: Tensor) -> Tensor:
    """T = 2: G₁₁a² + G₁₂ab = 1 = G₁₂ab + G₂₂b² gives a = b √(G₂₂/G₁₁), b⁻² = G₂₂ + G₁₂ √(G₂₂/G₁₁)."""
    ratio = math.sqrt(gramian[1, 1] / gramian[0, 0])
    b = 1 / math.sqrt(gramian[1, 1] + gramian[0, 1] * ratio)
    return f64([[b * ratio, b]])[0]


def test_golden_value() -> None:
    # G = [[18, −22], [−22, 38]]: α ≈ (0.5915, 0.4071), d = α₁g₁ + α₂g₂ ≈ (0.0766, 0.9985, 0.9985), ‖d‖² = 2.
    grads = f64([[-4, 1, 1], [6, 1, 1]])
    alpha = two_task_solution(grads @ grads.T)
    expected = alpha @ grads
    torch.testing.assert_close(nash(grads, max_norm=0.0), expected)
    torch.testing.assert_close(expected.norm(), torch.tensor(math.sqrt(2), dtype=torch.float64))
    torch.testing.assert_close(nash(grads), expected / math.sqrt(2))  # clipped to the default norm 1


def test_orthogonal_gradients_are_normalised() -> None:
    # G = diag(‖gᵢ‖²): αᵢ = 1/‖gᵢ‖, the update is the sum of the unit gradients.
    grads = f64([[3, 0, 0], [0, 0.5, 0], [0, 0, 20]])
    torch.testing.assert_close(nash(grads, max_norm=0.0), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(nash(grads).norm(), torch.tensor(1.0, dtype=torch.float64))


def test_where_the_concave_convex_procedure_stalls() -> None:
    # The authors' sequence of convex programs stops at α ≈ (64.6, 0.127) on this Gramian (from α = 1);
    # the solution of G α = 1/α is (3.93, 0.0278).
    gramian = f64([[0.088636, -3.3764], [-3.3764, 1774.6]])
    alpha = fair_weights(gramian, 1.0)
    torch.testing.assert_close(alpha, two_task_solution(gramian))
    torch.testing.assert_close(gramian @ alpha, 1 / alpha)


@pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP")
@pytest.mark.parametrize("seed", range(5))
def test_matches_torchjd(seed: int) -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    pytest.importorskip("cvxpy")
    num_tasks = 2 + seed % 4
    grads = torch.randn(num_tasks, 10, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    # On these matrices TorchJD's (the authors') procedure converges; it stops at a residual < 1e-3.
    expected = aggregation.NashMTL(n_tasks=num_tasks, max_norm=0.0)(grads)
    torch.testing.assert_close(nash(grads, max_norm=0.0), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_bargaining_properties(seed: int) -> None:
    # Every task gets gᵢᵀd = 1/αᵢ > 0, ‖d‖² = T, and the update does not depend on the gradients' scale.
    grads = torch.randn(5, 30, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    alpha = fair_weights(grads @ grads.T, 1.0)
    update = nash(grads, max_norm=0.0)
    torch.testing.assert_close(grads @ update, 1 / alpha)
    torch.testing.assert_close(update.norm() ** 2, torch.tensor(5.0, dtype=torch.float64))
    torch.testing.assert_close(nash(1e-4 * grads), nash(grads))


def test_update_weights_every_reuses_alpha() -> None:
    first, second = (torch.randn(3, 6, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
    method = get_method("nash_mtl", num_tasks=3, max_norm=0.0, update_weights_every=2)
    method.combine(first, StepContext())
    alpha = fair_weights(first @ first.T, 1.0).float()
    torch.testing.assert_close(method.combine(second, StepContext()), alpha @ second)  # reused
    torch.testing.assert_close(method.combine(second, StepContext()), nash(second, max_norm=0.0))  # solved


@pytest.mark.parametrize(
    ("hparams", "argument"),
    [
        ({"max_norm": -1.0}, "max_norm"),
        ({"update_weights_every": 0}, "update_weights_every"),
        ({"optim_niter": 0}, "optim_niter"),
    ],
)
def test_bad_hyperparameters_raise(hparams: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=f"nash_mtl: {argument}"):
        get_method("nash_mtl", num_tasks=3, **hparams)
