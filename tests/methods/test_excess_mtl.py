"""ExcessMTL: weights by hand, the authors' loop, TorchJD's ExcessMTL, steps and degenerate tasks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from benchmark.method import StepContext, WeightedMethod, get_method
from methods.excess_mtl import HESSIAN_EPS


def f64(*values: float) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


def excess_mtl(num_tasks: int = 2, **hparams: object) -> WeightedMethod:
    method = get_method("excess_mtl", num_tasks=num_tasks, **hparams)
    assert isinstance(method, WeightedMethod)
    return method


def weights_over(method: WeightedMethod, sequence: list[Tensor]) -> list[Tensor]:
    return [method.task_weights(grads, StepContext(step=s)) for s, grads in enumerate(sequence)]


def reference(sequence: list[Tensor], step_size: float) -> list[Tensor]:
    """The authors' loop: Σ g² accumulates, E = Σ g² / √(Σ g² + ε), the first E is the scale, and
    from the second step w ← w exp(η E / E⁽⁰⁾), renormalised to Σ w = T."""
    squares = torch.zeros_like(sequence[0])
    weights, scales, out = torch.ones(len(squares), dtype=torch.float64), None, []
    for grads in sequence:
        squares = squares + grads**2
        excess = (grads**2 / (squares + HESSIAN_EPS).sqrt()).sum(1)
        if scales is None:
            scales = excess
        else:
            weights = weights * torch.exp(step_size * excess / scales)
            weights = weights / weights.sum() * len(weights)
        out.append(weights)
    return out


def test_two_steps_by_hand() -> None:
    # One parameter, g = (1, 2) then (2, 2): Σ g² = (1, 4), then (5, 8).
    # E⁽⁰⁾ = (1, 4/2) = (1, 2) sets the scales (weights stay 1); E = (4/√5, 4/√8), E / E⁽⁰⁾ = (1.789, 0.707),
    # and with η = 1: w = 2 softmax(1.789, 0.707) = 2 σ(1.789 − 0.707) for task 0.
    method = excess_mtl(robust_step_size=1.0)
    first, second = weights_over(method, [f64(1.0, 2.0)[:, None], f64(2.0, 2.0)[:, None]])
    torch.testing.assert_close(first, f64(1.0, 1.0))
    ratios = [
        (4 / math.sqrt(5 + HESSIAN_EPS)) / (1 / math.sqrt(1 + HESSIAN_EPS)),
        (4 / math.sqrt(8 + HESSIAN_EPS)) / (4 / math.sqrt(4 + HESSIAN_EPS)),
    ]
    w0 = 2 / (1 + math.exp(ratios[1] - ratios[0]))
    torch.testing.assert_close(second, f64(w0, 2 - w0))


def test_repeated_gradients_keep_equal_weights() -> None:
    # g the same every step: Eₜ = Σ g² / √(t Σ g²) ∝ 1 / √t for every task, so E / E⁽⁰⁾ is equal across tasks.
    grads = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]], dtype=torch.float64)
    for weights in weights_over(excess_mtl(robust_step_size=1.0), [grads] * 4):
        torch.testing.assert_close(weights, f64(1.0, 1.0), rtol=0, atol=1e-7)


@pytest.mark.parametrize("step_size", [1e-2, 0.5])
def test_matches_the_authors_loop(step_size: float) -> None:
    generator = torch.Generator().manual_seed(0)
    scales = f64(1.0, 3.0, 0.3, 10.0)[:, None]
    sequence = [scales * torch.randn(4, 10, generator=generator, dtype=torch.float64) for _ in range(6)]
    ours = weights_over(excess_mtl(4, robust_step_size=step_size), sequence)
    for weights, expected in zip(ours, reference(sequence, step_size), strict=True):
        torch.testing.assert_close(weights, expected)


def test_matches_torchjd() -> None:
    torchjd = pytest.importorskip("torchjd.aggregation")
    # TorchJD's first call updates the weights with the unscaled estimate; with one warm-up step it keeps
    # them uniform and takes the first estimate as the scale, like the authors. Its weights sum to 1, ours
    # to T; it adds 1e-7 to the scale, hence the tolerance.
    generator = torch.Generator().manual_seed(1)
    sequence = [torch.randn(3, 8, generator=generator, dtype=torch.float64) * 5 for _ in range(6)]
    theirs = torchjd.ExcessMTLWeighting(robust_step_size=0.5, n_warmup_steps=1)
    for weights, grads in zip(
        weights_over(excess_mtl(3, robust_step_size=0.5), sequence), sequence, strict=True
    ):
        torch.testing.assert_close(weights / 3, theirs(grads), rtol=1e-6, atol=1e-7)


def test_a_task_without_gradient_gets_its_scale_later() -> None:
    # Task 1 has a zero gradient at the first step: no scale yet, its weight stays put until it has one.
    method = excess_mtl(robust_step_size=1.0)
    sequence = [f64(1.0, 0.0)[:, None], f64(1.0, 3.0)[:, None], f64(1.0, 3.0)[:, None]]
    weights = weights_over(method, sequence)
    assert all(torch.isfinite(w).all() for w in weights)
    # Step 1: task 0 moves by E / E⁽⁰⁾ = (1/√2) / 1, task 1 only sets its scale.
    ratio = (1 / math.sqrt(2 + HESSIAN_EPS)) / (1 / math.sqrt(1 + HESSIAN_EPS))
    w0 = 2 / (1 + math.exp(-ratio))
    torch.testing.assert_close(weights[1], f64(w0, 2 - w0))


def test_feature_level_sums_over_the_batch() -> None:
    grads = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    feature, summed = excess_mtl(robust_step_size=1.0), excess_mtl(robust_step_size=1.0)
    for step in range(3):
        batch = grads * (step + 1) ** torch.arange(1, 3, dtype=torch.float64)[:, None, None]
        ours = feature.task_weights(batch, StepContext(step=step, level="feature"))
        torch.testing.assert_close(ours, summed.task_weights(batch.sum(1), StepContext(step=step)))
    assert not torch.equal(ours, f64(1.0, 1.0))


def test_the_state_needs_a_fixed_shape() -> None:
    method = excess_mtl()
    method.task_weights(torch.ones(2, 3), StepContext(step=0))
    with pytest.raises(ValueError, match="shape"):
        method.task_weights(torch.ones(2, 4), StepContext(step=1))


@pytest.mark.parametrize("step_size", [0.0, -1.0, math.nan, math.inf, "0.01"])
def test_bad_step_size_raises(step_size: object) -> None:
    with pytest.raises(ValueError, match="robust_step_size"):
        excess_mtl(robust_step_size=step_size)
