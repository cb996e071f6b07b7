"""MoDo: one step by hand, the double-sampled λ-step, state over steps, and TorchJD."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from benchmark.method import StepContext, get_method
from methods._simplex import project_onto_simplex


def batches(num_tasks: int, seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    first = torch.randn(num_tasks, 6, generator=generator, dtype=torch.float64)
    return first, first + 0.5 * torch.randn(num_tasks, 6, generator=generator, dtype=torch.float64)


def test_one_step_by_hand() -> None:
    # J₁ = J₂ = diag(1, 2): J₁J₂ᵀλ = (1/2, 2); λ = Π((1/2, 1/2) − 0.1 ((1/2, 2) + 0.1 (1/2, 1/2)))
    # = Π(0.445, 0.295) = (0.575, 0.425), the update λᵀJ = (0.575, 0.85).
    grads = torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64))
    method = get_method("modo", num_tasks=2)
    torch.testing.assert_close(method.combine(grads), torch.tensor([0.575, 0.85], dtype=torch.float64))
    torch.testing.assert_close(method.lambd, torch.tensor([0.575, 0.425], dtype=torch.float64))


def test_golden_value() -> None:
    # J₁ = J₂ = [[−4, 1, 1], [6, 1, 1]]: G λ = (−2, 8) at λ = (1/2, 1/2), so the step reaches
    # Π((0.695, −0.305)) = (1, 0) and the update is g₁.
    grads = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
    method = get_method("modo", num_tasks=2)
    torch.testing.assert_close(method.combine(grads), grads[0])
    torch.testing.assert_close(method.lambd, torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_double_sampling_and_state() -> None:
    method = get_method("modo", num_tasks=3, gamma=0.5, rho=0.2)
    lambd = torch.full((3,), 1 / 3, dtype=torch.float64)
    for step in range(4):
        first, second = batches(3, step)
        update = method.combine(first, StepContext(extra_grads=second))
        lambd = project_onto_simplex(lambd - 0.5 * (first @ second.T @ lambd + 0.2 * lambd))
        torch.testing.assert_close(method.lambd, lambd)
        torch.testing.assert_close(update, lambd @ ((first + second) / 2))


def test_matches_torchjd_over_several_steps() -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    reference = aggregation.MoDoWeighting(gamma=0.1, rho=0.1)
    method = get_method("modo", num_tasks=4)
    for step in range(4):
        first, second = batches(4, 10 + step)
        update = method.combine(first, StepContext(extra_grads=second))
        torch.testing.assert_close(update, reference(first @ second.T) @ ((first + second) / 2))


def test_extra_gradients_of_another_shape_raise() -> None:
    first, _ = batches(3, 0)
    with pytest.raises(ValueError, match="extra_grads"):
        get_method("modo", num_tasks=3).combine(first, StepContext(extra_grads=first[:2]))


@pytest.mark.parametrize(
    ("hparams", "argument"),
    [({"gamma": 0.0}, "gamma"), ({"gamma": math.inf}, "gamma"), ({"rho": -1.0}, "rho")],
)
def test_bad_hyperparameters_raise(hparams: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=f"modo: {argument}"):
        get_method("modo", num_tasks=3, **hparams)
