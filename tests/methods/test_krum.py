"""Krum: scores by hand, the paper's squared distances, Multi-Krum, TorchJD's example, and its limits."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor

from benchmark.method import get_method
from methods.krum import krum_scores


def krum(grads: Tensor, **hparams: object) -> Tensor:
    return get_method("krum", grads.shape[0], **hparams).combine(grads)


def f64(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# (0, 0), (1, 0), (0, 1), (5, 5); f = 0, so each scores its T − 2 = 2 nearest neighbours. Squared
# distances: 1, 1, 50 from the first; 1, 2, 41 from the second; 1, 2, 41 from the third; 50, 41, 41 from
# the last. Scores: 2, 3, 3, 82.
POINTS = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]


def test_scores_by_hand() -> None:
    grads = f64(POINTS)
    torch.testing.assert_close(krum_scores(grads @ grads.T, 2), f64([[2.0, 3.0, 3.0, 82.0]])[0])


def test_krum_selects_the_least_score() -> None:
    torch.testing.assert_close(krum(f64(POINTS)), f64([[0.0, 0.0]])[0])


def test_multi_krum_averages_the_best() -> None:
    torch.testing.assert_close(krum(f64(POINTS), n_selected=3), f64([[1 / 3, 1 / 3]])[0])


def test_scores_follow_the_paper_on_random_gradients() -> None:
    """Brute force: each gradient's sum of squared distances to its T − f − 2 nearest others."""
    grads = torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for f in range(5):
        expected = []
        for i in range(7):
            others = sorted(float((grads[i] - grads[j]).pow(2).sum()) for j in range(7) if j != i)
            expected.append(sum(others[: 7 - f - 2]))
        torch.testing.assert_close(krum_scores(grads @ grads.T, 7 - f - 2), torch.tensor(expected).double())


def test_torchjd_documented_example() -> None:
    grads = f64([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [75.0, -666.0, 23.0], [1.0, 2.0, 3.0], [2.0, 0.0, 1.0]])
    update = krum(grads, n_byzantine=1, n_selected=4)
    torch.testing.assert_close(update, f64([[1.25, 0.75, 1.5]])[0])


def test_matches_torchjd_when_rankings_agree() -> None:
    """TorchJD sums distances where the paper sums squared distances; on clustered gradients with one
    outlier both rank the same, for every f and m."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    generator = torch.Generator().manual_seed(1)
    grads = 1 + 0.1 * torch.randn(8, 6, generator=generator, dtype=torch.float64)
    grads[3] = 50.0
    for f, m in itertools.product(range(3), (1, 3)):
        torch.testing.assert_close(krum(grads, n_byzantine=f, n_selected=m), aggregation.Krum(f, m)(grads))


def test_few_tasks_without_byzantine_gradients() -> None:
    torch.testing.assert_close(krum(f64([[1.0, 2.0]])), f64([[1.0, 2.0]])[0])
    # T = 2: no neighbour to score against, every score is 0 and the first gradient is kept.
    torch.testing.assert_close(krum(f64([[1.0, 2.0], [-1.0, 0.0]])), f64([[1.0, 2.0]])[0])


@pytest.mark.parametrize(
    ("num_tasks", "hparams", "argument"),
    [
        (4, {"n_byzantine": 2}, "n_byzantine"),  # needs f + 3 = 5 tasks
        (4, {"n_byzantine": -1}, "n_byzantine"),
        (4, {"n_selected": 0}, "n_selected"),
        (4, {"n_selected": 5}, "n_selected"),
        (4, {"n_selected": 1.5}, "n_selected"),
    ],
)
def test_bad_hyperparameters_raise(num_tasks: int, hparams: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=f"krum: {argument}"):
        get_method("krum", num_tasks, **hparams)
