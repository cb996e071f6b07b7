"""MGDA: min-norm golden values, the non-conflicting property, and the gradient normalisations."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from benchmark.method import StepContext, get_method
from methods.mgda import min_norm_weights


def mgda(grads: Tensor, losses: Tensor | None = None, **hparams: object) -> Tensor:
    method = get_method("mgda", num_tasks=grads.shape[0], **hparams)
    return method.combine(grads, StepContext(losses=losses))


def f64(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def random_jacobian(num_tasks: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-1, 1, num_tasks, dtype=torch.float64)[:, None]  # imbalanced norms
    shared = torch.randn(1, 20, generator=generator, dtype=torch.float64)
    return scales * (torch.randn(num_tasks, 20, generator=generator, dtype=torch.float64) + shared)


def test_two_orthonormal_gradients() -> None:
    torch.testing.assert_close(mgda(f64([[1, 0], [0, 1]])), f64([[0.5, 0.5]])[0])


def test_golden_value() -> None:
    # On the segment γ g1 + (1 - γ) g2 the last two coordinates are 1 and the first is 6 - 10γ, so the
    # norm is least at γ = 0.6, where the first coordinate vanishes: the min-norm element is (0, 1, 1).
    torch.testing.assert_close(mgda(f64([[-4, 1, 1], [6, 1, 1]])), f64([[0, 1, 1]])[0])


def test_three_orthonormal_gradients_reach_the_centre() -> None:
    torch.testing.assert_close(mgda(torch.eye(3, dtype=torch.float64)), torch.full((3,), 1 / 3).double())


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 10])
@pytest.mark.parametrize("seed", range(3))
def test_non_conflicting(num_tasks: int, seed: int) -> None:
    grads = random_jacobian(num_tasks, seed)
    update = mgda(grads)
    # At the min-norm point d, every g_t · d >= ‖d‖² > 0; Frank-Wolfe gets there up to its duality gap.
    assert (grads @ update).min() >= 0.999 * update.dot(update) > 0


@pytest.mark.parametrize("seed", range(3))
def test_permutation_invariant(seed: int) -> None:
    grads = random_jacobian(6, seed)
    permutation = torch.randperm(6, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(mgda(grads[permutation]), mgda(grads), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("extra", [[], [[0.3, -2.0, 1.0]]])
def test_zero_in_the_hull_gives_no_update(extra: list[list[float]]) -> None:
    grads = f64([[1.0, 2.0, -0.5], [-1.0, -2.0, 0.5], *extra])  # g, -g (and h): 0 is in the hull
    torch.testing.assert_close(mgda(grads), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)


# g1 = (2, 0), g2 = (0, 1), losses (1, 4). With divisors n, the solver sees g1/n1 = (a, 0), g2/n2 = (0, b);
# the min-norm weights are α1 = b²/(a² + b²), α2 = a²/(a² + b²), and the update is α1 g1 + α2 g2:
#   none  n = (1, 1):  a = 2,   b = 1     -> α = (1/5, 4/5)    -> (2/5, 4/5)
#   l2    n = (2, 1):  a = 1,   b = 1     -> α = (1/2, 1/2)    -> (1, 1/2)
#   loss  n = (1, 4):  a = 2,   b = 1/4   -> α = (1/65, 64/65) -> (2/65, 64/65)
#   loss+ n = (2, 4):  a = 1,   b = 1/4   -> α = (1/17, 16/17) -> (2/17, 16/17)
@pytest.mark.parametrize(
    ("normalization", "expected"),
    [("none", (2 / 5, 4 / 5)), ("l2", (1, 1 / 2)), ("loss", (2 / 65, 64 / 65)), ("loss+", (2 / 17, 16 / 17))],
)
def test_normalizations_by_hand(normalization: str, expected: tuple[float, float]) -> None:
    update = mgda(f64([[2, 0], [0, 1]]), torch.tensor([1.0, 4.0]), normalization=normalization)
    torch.testing.assert_close(update, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("normalization", ["loss", "loss+"])
def test_loss_normalizations_need_losses(normalization: str) -> None:
    with pytest.raises(ValueError, match="losses"):
        mgda(f64([[2, 0], [0, 1]]), normalization=normalization)


def test_weights_stay_on_the_simplex() -> None:
    grads = random_jacobian(8, 0)
    alpha = min_norm_weights(grads @ grads.T)
    assert alpha.min() >= 0
    torch.testing.assert_close(alpha.sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize(
    ("hparams", "argument"),
    [
        ({"normalization": "l1"}, "normalization"),
        ({"max_iter": -1}, "max_iter"),
        ({"stop_crit": -1.0}, "stop_crit"),
    ],
)
def test_bad_hyperparameters_raise(hparams: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        get_method("mgda", num_tasks=3, **hparams)
