"""GradVac: the cosine reaches its target, PCGrad at the first step, EMA targets, and TorchJD."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from benchmark.method import StepContext, get_method
from methods.gradvac import gradvac_weights
from methods.pcgrad import random_task_orders


def ctx(seed: int = 0) -> StepContext:
    return StepContext(generator=torch.Generator().manual_seed(seed))


def f64(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_correction_reaches_the_target_cosine() -> None:
    # g₁ = (1, 0), g₂ = (0, 1), φ = 0 < φ̂ = 1/2: g₁ += (1/2)/√(3/4) g₂ = g₂/√3, whose cosine with g₂ is 1/2.
    gramian = torch.eye(2, dtype=torch.float64)
    targets = f64([[0, 0.5], [0, 0]])
    orders = torch.tensor([[1], [0]])
    weights, updated = gradvac_weights(gramian, targets, orders, beta=0.5)
    torch.testing.assert_close(weights, f64([[1, 1 + 1 / math.sqrt(3)]])[0])
    torch.testing.assert_close(updated, f64([[0, 0.25], [0, 0]]))  # φ̂ ← (1 − β) φ̂ + β φ, φ = 0


@pytest.mark.parametrize("seed", range(4))
def test_corrected_cosines_meet_the_targets(seed: int) -> None:
    # T = 2: each gradient is corrected once, to exactly its target where it was below.
    generator = torch.Generator().manual_seed(seed)
    grads = torch.randn(2, 5, generator=generator, dtype=torch.float64)
    targets = torch.rand(2, 2, generator=generator, dtype=torch.float64).fill_diagonal_(0)
    coeffs = []
    for i in range(2):
        one_task = torch.full((2, 2), -1.0, dtype=torch.float64)  # a target of −1 is never missed
        one_task[i, 1 - i] = targets[i, 1 - i]
        weights, _ = gradvac_weights(grads @ grads.T, one_task, torch.tensor([[1], [0]]), beta=0.5)
        coeffs.append(weights - torch.eye(2, dtype=torch.float64)[1 - i])  # g_i^GV alone
    for i, c in enumerate(coeffs):
        corrected = c @ grads
        cosine = torch.nn.functional.cosine_similarity(corrected, grads[1 - i], dim=0)
        original = torch.nn.functional.cosine_similarity(grads[i], grads[1 - i], dim=0)
        torch.testing.assert_close(cosine, torch.maximum(original, targets[i, 1 - i]), rtol=1e-7, atol=1e-7)


def test_golden_value() -> None:
    # First step, targets 0: PCGrad. g₁·g₂ = −22, so g₁ += (22/38) g₂ and g₂ += (22/18) g₁:
    # the update is (1 + 11/9) g₁ + (1 + 11/19) g₂.
    grads = f64([[-4, 1, 1], [6, 1, 1]])
    expected = 20 / 9 * grads[0] + 30 / 19 * grads[1]
    torch.testing.assert_close(get_method("gradvac", num_tasks=2).combine(grads, ctx()), expected)


@pytest.mark.parametrize("seed", range(4))
def test_first_step_is_pcgrad(seed: int) -> None:
    grads = torch.randn(4, 6, generator=torch.Generator().manual_seed(10 + seed), dtype=torch.float64)
    expected = get_method("pcgrad", num_tasks=4).combine(grads, ctx(seed))
    torch.testing.assert_close(get_method("gradvac", num_tasks=4).combine(grads, ctx(seed)), expected)


def test_targets_follow_the_cosines() -> None:
    grads = torch.randn(3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    method = get_method("gradvac", num_tasks=3, beta=0.25)
    method.combine(grads, ctx())
    cosines = torch.nn.functional.cosine_similarity(grads[:, None], grads[None], dim=-1).fill_diagonal_(0)
    # PCGrad-like first step: the first visit sees the raw cosine; later ones see corrected gradients
    # whose cosine with the conflicting gradients is ≥ 0.
    first = random_task_orders(3, ctx().generator)[:, 0]
    rows = torch.arange(3)
    torch.testing.assert_close(method.targets[rows, first], 0.25 * cosines[rows, first])
    assert method.targets.diagonal().eq(0).all()


def jd_orders(num_tasks: int, seed: int) -> Tensor:
    """The orders TorchJD's GradVac draws after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    orders = []
    for i in range(num_tasks):
        others = [j for j in range(num_tasks) if j != i]
        orders.append([others[k] for k in torch.randperm(num_tasks - 1).tolist()])
    return torch.tensor(orders)


def test_matches_torchjd_over_several_steps() -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    for num_tasks in (2, 3, 5):
        reference = aggregation.GradVac(beta=0.5)
        targets = torch.zeros(num_tasks, num_tasks, dtype=torch.float64)
        for step in range(5):
            generator = torch.Generator().manual_seed(100 * num_tasks + step)
            grads = torch.randn(num_tasks, 8, generator=generator, dtype=torch.float64)
            grads += 0.3 * torch.randn(1, 8, generator=generator, dtype=torch.float64)
            orders = jd_orders(num_tasks, step)
            torch.manual_seed(step)
            expected = reference(grads)
            gramian = grads @ grads.T
            weights, targets = gradvac_weights(gramian / gramian.diagonal().max(), targets, orders, 0.5)
            torch.testing.assert_close(weights @ grads, expected, rtol=1e-6, atol=1e-7)
            phi = reference.gramian_weighting._phi_t
            torch.testing.assert_close(targets, phi, rtol=0, atol=1e-7)


def test_targets_restart_on_a_new_dtype() -> None:
    method = get_method("gradvac", num_tasks=3)
    method.combine(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), ctx())
    assert method.targets.dtype == torch.float32
    method.combine(torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64), ctx())
    assert method.targets.dtype == torch.float64


@pytest.mark.parametrize(
    ("hparams", "argument"), [({"beta": -0.1}, "beta"), ({"beta": 1.5}, "beta"), ({"eps": 0.0}, "eps")]
)
def test_bad_hyperparameters_raise(hparams: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=f"gradvac: {argument}"):
        get_method("gradvac", num_tasks=3, **hparams)
