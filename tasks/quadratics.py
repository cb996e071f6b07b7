"""T convex quadratics in d dimensions with controllable conflict and imbalance, and a closed-form Pareto set.

Loss i is ``Lᵢ(x) = ½ sᵢ (x − cᵢ)ᵀ Aᵢ (x − cᵢ)`` on a point x ∈ Rᵈ, with ``Bᵢ = sᵢAᵢ`` positive definite.
Everything is drawn from ``problem_seed`` (fixed across run seeds):

- **conflict**: the centres lie on the unit sphere, on a cone of half-angle θ (``angle``) around the
  first axis e₁: ``cᵢ = cos θ e₁ + sin θ uᵢ`` with uᵢ unit vectors orthogonal to e₁, centred over the
  tasks before normalising (for T = 2, u₂ = −u₁: the centres are 2θ apart). θ = 0 gives one joint
  minimum; θ = 90° puts the centres on the equator around the origin.
- **imbalance**: each Aᵢ = QᵢΛQᵢᵀ has eigenvalues spread geometrically from 1 to ``condition`` and a
  random rotation Qᵢ (``scipy.stats.ortho_group``); the scales sᵢ = ``scale_range`` ^ (i / (T − 1))
  run geometrically from 1 to ``scale_range``.

The Pareto set of strictly convex losses is the set of minimisers of their weighted sums (the weighting
method: Miettinen 1999, *Nonlinear Multiobjective Optimization*, Part II, Sec. 3.1):
``{ x(w) = (Σ wᵢBᵢ)⁻¹ Σ wᵢBᵢcᵢ : w in the simplex }``. Equivalently, x is Pareto optimal iff 0 lies in
the convex hull of the gradients ∇Lᵢ(x) = Bᵢ(x − cᵢ) (Pareto stationarity, which for convex losses is
sufficient): the norm of the hull's min-norm element, MGDA's problem (Sener & Koltun 2018, NeurIPS), is
the certificate :func:`min_norm` computes exactly.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch
from scipy.optimize import minimize, nnls
from scipy.stats import ortho_group
from torch import Tensor, nn

from benchmark.registry import TASKS
from benchmark.task import Metric, MultiTaskModel
from tasks._checks import check_int, check_number
from tasks._point import Point, PointTask

log = logging.getLogger(__name__)

START_RADIUS = 2.0
"""Starts ``start >= 1`` are drawn uniformly on the sphere of this radius around the origin."""

REFERENCE_FACTOR = 1.1
"""The hypervolume's reference point is this factor times the losses at the start."""

STATIONARITY_TOLERANCE = (1e-3, 1e-6)
"""A distance solution whose Frank-Wolfe gap exceeds ``rel · distance + abs`` is logged (the gap scales
with the distance: ∂f/∂wᵢ carries the factor x(w) − x)."""


@dataclass(frozen=True)
class Problem:
    """The losses ``Lᵢ(x) = ½ (x − cᵢ)ᵀ Bᵢ (x − cᵢ)``: ``centres`` cᵢ ``[T, d]`` and ``curvatures``
    Bᵢ = sᵢAᵢ ``[T, d, d]`` (symmetric positive definite), float64."""

    centres: Tensor
    curvatures: Tensor

    def losses(self, x: Tensor) -> Tensor:
        """Points ``[..., d]`` -> losses ``[..., T]``."""
        diff = x.unsqueeze(-2) - self.centres.to(x)  # [..., T, d]
        return 0.5 * torch.einsum("...ti,tij,...tj->...t", diff, self.curvatures.to(x), diff)

    def gradients(self, x: Tensor) -> Tensor:
        """A point ``[d]`` -> the gradients ∇Lᵢ(x) = Bᵢ(x − cᵢ), ``[T, d]``."""
        return torch.einsum("tij,tj->ti", self.curvatures.to(x), x - self.centres.to(x))

    def pareto_point(self, weights: Tensor) -> Tensor:
        """x(w) = (Σ wᵢBᵢ)⁻¹ Σ wᵢBᵢcᵢ, the minimiser of Σ wᵢLᵢ, for weights ``[T]`` (or ``[N, T]``)."""
        matrix = torch.einsum("...t,tij->...ij", weights, self.curvatures)
        vector = torch.einsum("...t,tij,tj->...i", weights, self.curvatures, self.centres)
        return torch.linalg.solve(matrix, vector)


def make_problem(
    num_tasks: int, dim: int, angle: float, condition: float, scale_range: float, problem_seed: int
) -> Problem:
    """The problem of the module docstring, drawn from ``numpy.random.default_rng(problem_seed)``."""
    rng = np.random.default_rng(problem_seed)
    spread = rng.standard_normal((num_tasks, dim - 1))
    spread -= spread.mean(0)
    spread /= np.linalg.norm(spread, axis=1, keepdims=True)
    theta = math.radians(angle)
    centres = np.concatenate([np.full((num_tasks, 1), math.cos(theta)), math.sin(theta) * spread], 1)
    eigenvalues = condition ** (np.arange(dim) / (dim - 1))
    scales = scale_range ** (np.arange(num_tasks) / (num_tasks - 1))
    rotations = ortho_group.rvs(dim, size=num_tasks, random_state=rng).reshape(num_tasks, dim, dim)
    curvatures = scales[:, None, None] * (rotations * eigenvalues) @ rotations.transpose(0, 2, 1)
    curvatures = (curvatures + curvatures.transpose(0, 2, 1)) / 2  # exactly symmetric
    return Problem(torch.from_numpy(centres), torch.from_numpy(curvatures))


def start_point(dim: int, problem_seed: int, start: int) -> Tensor:
    """Start 0 is the origin, the apex of the centres' cone (every centre at distance 1); start k ≥ 1 is
    drawn uniformly on the sphere of radius :data:`START_RADIUS` with the seed ``(problem_seed, k)``."""
    if start == 0:
        return torch.zeros(dim, dtype=torch.float64)
    direction = np.random.default_rng([problem_seed, start]).standard_normal(dim)
    return torch.from_numpy(START_RADIUS * direction / np.linalg.norm(direction))


# ---------------------------------------------------------------------------------------------------
# Certificates: the min-norm element of the gradients' hull, the distance to the Pareto set, hypervolume


def min_norm(grads: Tensor) -> tuple[Tensor, float]:
    """The weights ``[T]`` and the norm of the min-norm element Σ wᵢgᵢ of the convex hull of ``grads``.

    Exact, with ``scipy.optimize.nnls`` (Lawson-Hanson active set): for u = t·w with w in the simplex,
    ‖Σ uᵢgᵢ‖² + (Σ uᵢ − 1)² is minimised over t ≥ 0 at the value n²/(1 + n²) with n = ‖Σ wᵢgᵢ‖, which
    increases with n; so the non-negative least-squares solution u of ``[Gᵀ; 1ᵀ] u ≈ [0; 1]``,
    normalised to w = u / Σu, minimises the norm over the simplex.
    """
    g = grads.detach().double().cpu().numpy()
    system = np.vstack([g.T, np.ones((1, len(g)))])
    target = np.zeros(len(system))
    target[-1] = 1.0
    u, _ = nnls(system, target)
    weights = torch.from_numpy(u / u.sum())
    return weights, float(torch.linalg.vector_norm(weights @ grads.detach().double().cpu()))


def pareto_distance(problem: Problem, x: Tensor) -> tuple[float, Tensor]:
    """The Euclidean distance from ``x`` ``[d]`` to the Pareto set, and the weights of the nearest point.

    Minimises ½‖x(w) − x‖² over the simplex with SLSQP (analytic gradient: ∂x(w)/∂wᵢ = M⁻¹Bᵢ(cᵢ − x(w)),
    M = Σ wᵢBᵢ), from the min-norm weights at x (exact when x is on the set: then x(w) = x), uniform
    weights and the vertex of the nearest centre; the best is kept. The objective is not convex in w:
    each solution is a stationary point, checked by its Frank-Wolfe gap wᵀ∇f − minᵢ ∂f/∂wᵢ (logged when
    not small), and the distance it gives is an upper bound attained by a Pareto point x(w).
    """
    x = x.detach().double().cpu()
    curvatures, centres = problem.curvatures.numpy(), problem.centres.numpy()
    point = x.numpy()
    num_tasks = len(centres)

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        matrix = np.einsum("t,tij->ij", w, curvatures)
        nearest = np.linalg.solve(matrix, np.einsum("t,tij,tj->i", w, curvatures, centres))
        diff = nearest - point
        back = np.linalg.solve(matrix, diff)  # M is symmetric: (x(w) − x)ᵀ M⁻¹
        grad = np.einsum("i,tij,tj->t", back, curvatures, centres - nearest)
        return 0.5 * float(diff @ diff), grad

    vertex = np.eye(num_tasks)[np.argmin(np.linalg.norm(centres - point, axis=1))]
    starts = [min_norm(problem.gradients(x))[0].numpy(), np.full(num_tasks, 1.0 / num_tasks), vertex]
    best_value, best_w, best_grad = math.inf, starts[0], np.zeros(num_tasks)
    for w0 in starts:
        result = minimize(
            objective,
            w0,
            jac=True,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * num_tasks,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
            options={"ftol": 1e-15, "maxiter": 200},
        )
        w = np.clip(result.x, 0.0, None)
        w /= w.sum()
        value, grad = objective(w)
        if value < best_value:
            best_value, best_w, best_grad = value, w, grad
    gap = float(best_w @ best_grad - best_grad.min())
    relative, absolute = STATIONARITY_TOLERANCE
    if gap > relative * math.sqrt(2 * best_value) + absolute:
        log.warning("quadratics: distance solution not stationary (Frank-Wolfe gap %.3g)", gap)
    return math.sqrt(2 * best_value), torch.from_numpy(best_w)


def hypervolume(losses: Tensor, reference: Tensor) -> float:
    """The share of the box [0, r] (ideal point 0, every loss's minimum; reference r) that the loss
    vector dominates: Πᵢ max(0, 1 − Lᵢ/rᵢ) — the one-point hypervolume Πᵢ (rᵢ − Lᵢ)₊ divided by the box
    volume Πᵢ rᵢ, so that the loss scales cancel. In [0, 1]: 1 at the ideal point, 0 beyond the reference.
    """
    return float(torch.prod(torch.clamp(1 - losses / reference, min=0.0)))


# ---------------------------------------------------------------------------------------------------
# The task


class Quadratic(nn.Module):
    """A parameter-free head: z ``[1, d]`` -> ½ (z − c)ᵀ B (z − c)."""

    def __init__(self, centre: Tensor, curvature: Tensor) -> None:
        super().__init__()
        self.register_buffer("centre", centre.float())
        self.register_buffer("curvature", curvature.float())

    def forward(self, z: Tensor) -> Tensor:
        diff = z[0] - self.centre
        return 0.5 * diff @ self.curvature @ diff




@TASKS.register("quadratics")
class Quadratics(PointTask):
    """T convex quadratics on a point x ∈ Rᵈ (see the module docstring); x is the only (shared) parameter.

    Args:
        num_tasks: T ≥ 2 (scaling studies run up to 40).
        dim: d ≥ 2.
        angle: θ in degrees, [0, 90], the half-angle of the centres' cone (conflict).
        condition: condition number of each Aᵢ, ≥ 1 (1: Aᵢ = I).
        scale_range: ratio of the largest loss scale to the smallest, ≥ 1 (imbalance).
        problem_seed: the seed of the centres, rotations and starts, fixed across run seeds.
        start: 0 for the origin, k ≥ 1 for the k-th seeded start (:func:`start_point`).

    Deterministic: the problem and the start are task parameters, so the run seed changes nothing; a
    suite varies the start with a grid over ``start``. No data, so no split: evaluation is on ``train``.

    Metrics: ``pareto_distance`` (:func:`pareto_distance`), ``hypervolume`` (:func:`hypervolume` with the
    reference r = 1.1 L(start), so (1/11)ᵀ at the start) and ``min_norm`` (:func:`min_norm` of the
    gradients, 0 exactly on the Pareto set: the stationarity measure); as diagnostics ``loss_sum``, each
    loss ``loss/quad<i>`` and the reference ``reference/quad<i>`` (the report's loss-space plot).
    """

    description = "T convex quadratics in R^d: conflict angle, conditioning, scale spread; exact Pareto set"
    train_defaults = MappingProxyType(
        {
            "optimizer": "adam",
            "lr": 0.01,
            "schedule": "cosine",
            "steps": 2000,
            "batch_size": None,
            "eval_every": 200,
        }
    )

    def __init__(
        self,
        num_tasks: int = 2,
        dim: int = 10,
        angle: float = 60.0,
        condition: float = 10.0,
        scale_range: float = 10.0,
        problem_seed: int = 0,
        start: int = 0,
    ) -> None:
        num_tasks = check_int("quadratics", "num_tasks", num_tasks, 2)
        super().__init__(tuple(f"quad{i}" for i in range(num_tasks)))
        self.dim = check_int("quadratics", "dim", dim, 2)
        angle = check_number("quadratics", "angle", angle, 0.0, 90.0)
        condition = check_number("quadratics", "condition", condition, 1.0)
        scale_range = check_number("quadratics", "scale_range", scale_range, 1.0)
        problem_seed = check_int("quadratics", "problem_seed", problem_seed, 0)
        self.problem = make_problem(num_tasks, self.dim, angle, condition, scale_range, problem_seed)
        self.start = start_point(self.dim, problem_seed, check_int("quadratics", "start", start, 0))
        start_losses = self.problem.losses(self.start.float().double())  # the start as the model holds it
        if not torch.all(start_losses > 0):
            raise ValueError(f"quadratics: start={start} lies on a centre; hypervolume needs L(start) > 0")
        self.reference = REFERENCE_FACTOR * start_losses

    def build_model(self) -> MultiTaskModel:
        heads = [Quadratic(c, b) for c, b in zip(self.problem.centres, self.problem.curvatures, strict=True)]
        return MultiTaskModel(Point(self.start), heads)

    def metrics(self) -> list[Metric]:
        return [
            Metric("pareto_distance", False, "Euclidean distance from x to the Pareto set"),
            Metric("hypervolume", True, "dominated share of the box [0, 1.1 L(start)]"),
            Metric("min_norm", False, "norm of the min-norm element of the gradients' hull (0: Pareto)"),
        ]

    @torch.no_grad()
    def evaluate(self, model: MultiTaskModel, split: str) -> dict[str, float]:
        x = self.point(model)
        losses = self.problem.losses(x)
        values = {
            "pareto_distance": pareto_distance(self.problem, x)[0],
            "hypervolume": hypervolume(losses, self.reference),
            "min_norm": min_norm(self.problem.gradients(x))[1],
            "loss_sum": float(losses.sum()),
        }
        for name, loss, reference in zip(self.task_names, losses, self.reference, strict=True):
            values[f"loss/{name}"], values[f"reference/{name}"] = float(loss), float(reference)
        return values
