"""SDMGrad: the authors' inner loop transcribed, the update's form, two batches, and TorchJD."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from benchmark.method import StepContext, get_method
from methods._simplex import project_onto_simplex
from methods.sdmgrad import direction_oriented_weights


def batches(num_tasks: int, seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    first = torch.randn(num_tasks, 9, generator=generator, dtype=torch.float64)
    return first, first + 0.3 * torch.randn(num_tasks, 9, generator=generator, dtype=torch.float64)


def authors_loop(cross: Tensor, w: Tensor, lamda: float, niter: int, lr: float, momentum: float) -> Tensor:
    """The authors' ``sdmgrad`` inner loop: torch SGD with momentum, then a projection, ``niter`` times."""
    w = w.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([w], lr=lr, momentum=momentum)
    for _ in range(niter):
        optimizer.zero_grad()
        w.grad = cross @ w.detach() + lamda * cross.mean(1)
        optimizer.step()
        with torch.no_grad():
            w.copy_(project_onto_simplex(w))
    return w.detach()


@pytest.mark.parametrize("seed", range(3))
def test_inner_loop_matches_the_authors(seed: int) -> None:
    first, second = batches(4, seed)
    cross = first @ second.T
    cross = cross / cross.diagonal().sqrt().mean() ** 2
    start = project_onto_simplex(torch.rand(4, generator=torch.Generator().manual_seed(seed)).double())
    expected = authors_loop(cross, start, 0.3, 20, 10.0, 0.5)
    torch.testing.assert_close(direction_oriented_weights(cross, start, 0.3, 20, 10.0, 0.5), expected)


def test_update_form_and_state() -> None:
    first, second = batches(3, 0)
    cross = first @ second.T
    normalized = cross / cross.diagonal().sqrt().mean() ** 2  # the authors' scale normalisation
    method = get_method("sdmgrad", num_tasks=3)
    update = method.combine(first, StepContext(extra_grads=second))
    w = direction_oriented_weights(normalized, torch.full((3,), 1 / 3).double(), 0.3, 20, 10.0, 0.5)
    torch.testing.assert_close(method.w, w)
    # d = T (J w + λ g₀) / (1 + λ), on the mean of the two batches.
    expected = 3 * ((w + 0.3 / 3) / 1.3) @ ((first + second) / 2)
    torch.testing.assert_close(update, expected)
    method.combine(first, StepContext(extra_grads=second))  # warm-started from the last w
    torch.testing.assert_close(method.w, direction_oriented_weights(normalized, w, 0.3, 20, 10.0, 0.5))


def test_one_batch_uses_it_twice() -> None:
    first, _ = batches(3, 1)
    alone = get_method("sdmgrad", num_tasks=3).combine(first, StepContext())
    twice = get_method("sdmgrad", num_tasks=3).combine(first, StepContext(extra_grads=first.clone()))
    torch.testing.assert_close(alone, twice)


def test_large_lambda_tends_to_the_summed_gradient() -> None:
    first, second = batches(4, 2)
    update = get_method("sdmgrad", num_tasks=4, lamda=1e9).combine(first, StepContext(extra_grads=second))
    torch.testing.assert_close(update, ((first + second) / 2).sum(0))


def test_matches_torchjd_over_several_steps() -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    reference = aggregation.SDMGradWeighting()  # lr 10, momentum 0.5, 20 steps, λ = 0.3, like ours
    method = get_method("sdmgrad", num_tasks=4)
    for step in range(4):
        first, second = batches(4, 10 + step)
        update = method.combine(first, StepContext(extra_grads=second))
        weights = reference(first @ second.T) * 4  # TorchJD: (w + λ/T)/(1 + λ), without the factor T
        # TorchJD adds 1e-8 to the squared scale; 20 steps of lr 10 amplify that to ~1e-6.
        torch.testing.assert_close(update, weights @ ((first + second) / 2), rtol=1e-4, atol=1e-5)


def test_extra_gradients_of_another_shape_raise() -> None:
    first, _ = batches(3, 0)
    with pytest.raises(ValueError, match="extra_grads"):
        get_method("sdmgrad", num_tasks=3).combine(first, StepContext(extra_grads=first[:, :4]))


@pytest.mark.parametrize(
    ("hparams", "argument"),
    [
        ({"lamda": -0.1}, "lamda"),
        ({"niter": 0}, "niter"),
        ({"lr": 0.0}, "lr"),
        ({"lr": math.inf}, "lr"),
        ({"momentum": 1.0}, "momentum"),
    ],
)
def test_bad_hyperparameters_raise(hparams: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=f"sdmgrad: {argument}"):
        get_method("sdmgrad", num_tasks=3, **hparams)
