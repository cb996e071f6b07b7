"""MGDA: min-norm golden values, the non-conflicting property, and the gradient normalisations."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from benchmark.method import StepContext, get_method
from methods.mgda import min_norm_weights, wolfe_min_norm


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


def duality_gap(grads: Tensor, alpha: Tensor) -> Tensor:
    """``‖d‖² − minᵢ gᵢ·d`` for ``d = αᵀJ``: 0 exactly at the min-norm point; it bounds ‖d − d*‖² / 2."""
    update = alpha @ grads
    return update.dot(update) - (grads @ update).min()


def jacobian_family(kind: str, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    normal = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    if kind == "correlated":  # the optimum weighs most tasks: found by the guess
        return normal(40, 300) + normal(1, 300)
    if kind == "imbalanced":  # norms over 4 orders: the optimum sits near the shortest gradient
        return torch.logspace(-2, 2, 12, dtype=torch.float64)[:, None] * (normal(12, 30) + 2 * normal(1, 30))
    if kind == "wide":  # more tasks than parameters: many affinely dependent supports
        return normal(30, 8)
    if kind == "duplicates":  # repeated and opposite rows
        base = normal(4, 10)
        return torch.cat([base, base[:2], -base[2:3], 3 * base[:1]])
    return normal(6, 2) @ normal(2, 40)  # low rank


@pytest.mark.parametrize("kind", ["correlated", "imbalanced", "wide", "duplicates", "low rank"])
@pytest.mark.parametrize("seed", range(3))
def test_solver_reaches_the_min_norm_point(kind: str, seed: int) -> None:
    grads = jacobian_family(kind, seed)
    alpha = min_norm_weights(grads @ grads.T)
    assert alpha.min() >= 0
    torch.testing.assert_close(alpha.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert duality_gap(grads, alpha) <= 1e-13 * grads.norm(dim=1).max() ** 2


def test_wolfe_alone_is_exact_where_frank_wolfe_is_slow() -> None:
    grads = jacobian_family("wide", 0)
    alpha = wolfe_min_norm(grads @ grads.T, max_steps=4 * 30 + 8)
    assert duality_gap(grads, alpha) <= 1e-13 * grads.norm(dim=1).max() ** 2


def test_interior_optimum_in_closed_form() -> None:
    # Every weight positive: α ∝ G⁻¹ 1 (the affine min-norm point of all gradients).
    grads = torch.eye(5, 9, dtype=torch.float64) * torch.linspace(1, 3, 5, dtype=torch.float64)[:, None]
    grads = grads + 0.1 * torch.randn(5, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gramian = grads @ grads.T
    expected = torch.linalg.solve(gramian, torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(min_norm_weights(gramian), expected / expected.sum(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_same_optimum_as_a_qp_solver(seed: int) -> None:
    quadprog = pytest.importorskip("quadprog")
    grads = random_jacobian(7, seed)  # 7 tasks, 20 parameters: G positive definite, a unique optimum
    gramian = (grads @ grads.T).numpy()
    constraints = torch.cat([torch.ones(7, 1), torch.eye(7)], 1).double().numpy()
    bounds = torch.cat([torch.ones(1), torch.zeros(7)]).double().numpy()
    expected = quadprog.solve_qp(gramian, 0 * bounds[1:], constraints, bounds, meq=1)[0]
    torch.testing.assert_close(
        min_norm_weights(grads @ grads.T), torch.from_numpy(expected), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("num_tasks", [2, 3, 4, 5])
@pytest.mark.parametrize("seed", range(2))
def test_matches_torchjd_mgda(num_tasks: int, seed: int) -> None:
    torchjd = pytest.importorskip("torchjd.aggregation")
    # TorchJD runs Frank-Wolfe from the uniform weights; it converges (linearly) where the optimum is
    # well inside the simplex, as for these near-orthogonal gradients (all weights > 0.07), so a tight
    # epsilon reaches the same point; its defaults (epsilon 1e-3, 100 steps) stop up to 1e-2 away.
    generator = torch.Generator().manual_seed(seed)
    grads = torch.eye(num_tasks, 12, dtype=torch.float64)
    grads = grads * torch.linspace(1, 2, num_tasks, dtype=torch.float64)[:, None]
    grads = grads + 0.2 * torch.randn(num_tasks, 12, generator=generator, dtype=torch.float64)
    theirs = torchjd.MGDAWeighting(epsilon=1e-12, max_iters=2_000)(grads @ grads.T)
    torch.testing.assert_close(min_norm_weights(grads @ grads.T), theirs, rtol=0, atol=1e-9)
    torch.testing.assert_close(
        mgda(grads), torchjd.MGDA(epsilon=1e-12, max_iters=2_000)(grads), rtol=0, atol=1e-9
    )


def test_float32_gramians() -> None:
    grads = jacobian_family("correlated", 0)
    alpha = min_norm_weights((grads @ grads.T).float())
    assert alpha.dtype == torch.float32 and alpha.min() >= 0
    assert duality_gap(grads, alpha.double()) <= 1e-5 * grads.norm(dim=1).max() ** 2
