"""UPGrad and DualProj: golden values, projections by hand, TorchJD's values, preferences and errors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from benchmark.method import get_method

GOLDEN = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]


def combine(name: str, grads: Tensor, **hparams: object) -> Tensor:
    return get_method(name, grads.shape[0], **hparams).combine(grads)


def f64(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def random_jacobian(num_tasks: int, num_params: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-1, 1, num_tasks, dtype=torch.float64)[:, None]
    return scales * torch.randn(num_tasks, num_params, generator=generator, dtype=torch.float64)


def test_upgrad_golden_value() -> None:
    # g1 · g2 = −22: g1 projects onto g2⊥ as g1 + (22/38) g2 = (−10, 30, 30)/19, g2 onto g1⊥ as
    # g2 + (22/18) g1 = (10, 20, 20)/9; their mean is (50, 325, 325)/171.
    expected = torch.tensor([50.0, 325.0, 325.0], dtype=torch.float64) / 171
    torch.testing.assert_close(combine("upgrad", f64(GOLDEN)), expected)


def test_dualproj_golden_value() -> None:
    # The mean (1, 1, 1) has g1 · mean = −2: its projection onto g1⊥ is (1, 1, 1) + (2/18) g1
    # = (5, 10, 10)/9, and g2 · (5, 10, 10)/9 > 0, so that is the projection onto the cone.
    expected = torch.tensor([5.0, 10.0, 10.0], dtype=torch.float64) / 9
    torch.testing.assert_close(combine("dualproj", f64(GOLDEN)), expected)


@pytest.mark.parametrize(
    ("name", "expected"), [("upgrad", [0.2929, 1.9004, 1.9004]), ("dualproj", [0.5563, 1.1109, 1.1109])]
)
def test_torchjd_documented_values_with_its_ridge(name: str, expected: list[float]) -> None:
    update = combine(name, f64(GOLDEN), reg_eps=1e-4)
    torch.testing.assert_close(update, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-4)


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 10])
@pytest.mark.parametrize("num_params", [3, 40])
@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_matches_torchjd(name: str, num_tasks: int, num_params: int) -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    reference = aggregation.UPGrad() if name == "upgrad" else aggregation.DualProj()
    for seed in range(3):
        grads = random_jacobian(num_tasks, num_params, seed)
        expected = reference(grads)
        torch.testing.assert_close(combine(name, grads, reg_eps=1e-4), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 10])
@pytest.mark.parametrize("num_params", [2, 40])
@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_exact_projection_does_not_conflict(name: str, num_tasks: int, num_params: int) -> None:
    for seed in range(3):
        grads = random_jacobian(num_tasks, num_params, seed)
        update = combine(name, grads)
        dots = grads @ update  # the cone may be {0} (T > P): then the update is 0 up to rounding
        assert (dots >= -1e-9 * grads.norm(dim=1) * update.norm() - 1e-13 * grads.norm() ** 2).all()


def test_orthogonal_gradients_give_their_mean() -> None:
    grads = f64([[2.0, 0.0, 0.0], [0.0, -3.0, 0.0], [0.0, 0.0, 0.5]])
    for name in ("upgrad", "dualproj"):
        torch.testing.assert_close(combine(name, grads), grads.mean(0))


def test_opposite_gradients_give_zero() -> None:
    grads = f64([[1.0, -2.0, 0.5], [-1.0, 2.0, -0.5]])
    for name in ("upgrad", "dualproj"):
        torch.testing.assert_close(
            combine(name, grads), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12
        )


def test_preference_vector_weighs_the_projections() -> None:
    # g1 = (1, 0), g2 = (−1, 1): the projections are (1/2, 1/2) and (0, 1), weighted by p.
    grads = f64([[1.0, 0.0], [-1.0, 1.0]])
    update = combine("upgrad", grads, pref_vector=[3.0, 1.0])
    torch.testing.assert_close(update, f64([[1.5, 2.5]])[0])


def test_dualproj_preference_vector_projects_the_weighted_sum() -> None:
    # 3 g1 + g2 = (2, 1) has g2 · (2, 1) = −1: its projection onto g2⊥ is (2, 1) + g2 / 2 = (3/2, 3/2),
    # which g1 accepts.
    grads = f64([[1.0, 0.0], [-1.0, 1.0]])
    torch.testing.assert_close(combine("dualproj", grads, pref_vector=[3.0, 1.0]), f64([[1.5, 1.5]])[0])


def test_float32_gradients() -> None:
    grads = random_jacobian(5, 30, 0)
    for name in ("upgrad", "dualproj"):
        update = combine(name, grads.float())
        assert update.dtype == torch.float32
        torch.testing.assert_close(update.double(), combine(name, grads), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
@pytest.mark.parametrize(
    ("hparams", "argument"),
    [
        ({"reg_eps": -1e-4}, "reg_eps"),
        ({"reg_eps": float("nan")}, "reg_eps"),
        ({"pref_vector": [1.0, 2.0]}, "pref_vector"),
        ({"pref_vector": [1.0, 2.0, float("inf")]}, "pref_vector"),
    ],
)
def test_bad_hyperparameters_raise(name: str, hparams: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=f"{name}: {argument}"):
        get_method(name, num_tasks=3, **hparams)
