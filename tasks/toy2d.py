"""The two-objective toy of CAGrad, Nash-MTL and FAMO: two losses of a point x in the plane.

Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS
(`Cranial-XIX/CAGrad`, ``toy.py``); Navon et al. 2022, "Multi-Task Learning as a Bargaining Game",
ICML (`AvivNavon/nash-mtl`, ``experiments/toy``); Liu et al. 2023, "FAMO: Fast Adaptive Multitask
Optimization", NeurIPS (`Cranial-XIX/FAMO`, ``experiments/toy``). The formulas are DESIGN §5.

Gradient clipping differs between the repos: CAGrad's ``toy.py`` never clips. In Nash-MTL's, only
Nash-MTL clips its update to norm 1. In FAMO's, PCGrad, CAGrad and GradDrop clip to 1; the other methods
(LS, MGDA, Nash-MTL, FAMO) call the clip before ``loss.backward()``, on zeroed gradients, so it does
nothing. Here clipping is the explicit ``clip_grad_norm`` training setting, off by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, partial
from types import MappingProxyType

import torch
from torch import Tensor, nn

from benchmark.registry import TASKS
from benchmark.task import Landscape, Metric, MultiTaskModel
from tasks._point import Point, PointTask

BOUNDS = (-11.0, 11.0, -11.0, 11.0)
"""The plotted square, as in CAGrad's contour plots."""

REGION = 100.0
"""A run whose point leaves the square ``|x₁|, |x₂| <= REGION`` (nine times the plotted one; every start
and the whole Pareto set lie inside the plotted square) has diverged: far out, both losses are flat in
x₂ and grow in x₁, and no sensible step size gets there."""

FRONT_TOLERANCE = 1e-3
"""A point is on the front when its :func:`pareto_gap` is at most this (0.1 % of the front's range)."""

LOWER = 5e-6
"""The floor under the arguments of the logarithms in g₁ and g₂."""


@dataclass(frozen=True)
class Variant:
    """One published set-up: the factor on L₁, the starting points and the number of Adam steps."""

    scale1: float
    starts: tuple[tuple[float, float], ...]
    steps: int


VARIANTS = MappingProxyType(
    {
        # Nash-MTL (35k steps) and FAMO (50k steps): L1 x 0.1, five starts.
        "nashmtl": Variant(0.1, ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0)), 35_000),
        # CAGrad: no scaling, three starts, 100k steps.
        "cagrad": Variant(1.0, ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0)), 100_000),
    }
)


def toy_loss(x: Tensor, index: int, scale1: float = 1.0) -> Tensor:
    """Points ``[..., 2]`` -> loss Lᵢ ``[...]`` for ``index`` i ∈ {0, 1} (L₁ multiplied by ``scale1``).

    g₁ = log(max(|0.5(−x₁−7) − tanh(−x₂)|, 5e-6)) + 6,  g₂ = log(max(|0.5(−x₁+3) + tanh(−x₂) + 2|, 5e-6)) + 6,
    h₁ = ((−x₁+7)² + 0.1(−x₂−8)²)/10 − 20,  h₂ = ((−x₁−7)² + 0.1(−x₂−8)²)/10 − 20,
    c₁ = max(tanh(x₂/2), 0),  c₂ = max(tanh(−x₂/2), 0);  L₁ = c₁g₁ + c₂h₁,  L₂ = c₁g₂ + c₂h₂.
    """
    x1, x2 = x[..., 0], x[..., 1]
    if index == 0:
        g = torch.log(torch.clamp(torch.abs(0.5 * (-x1 - 7) - torch.tanh(-x2)), min=LOWER)) + 6
        h = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    else:
        g = torch.log(torch.clamp(torch.abs(0.5 * (-x1 + 3) + torch.tanh(-x2) + 2), min=LOWER)) + 6
        h = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    c1 = torch.clamp(torch.tanh(x2 / 2), min=0)
    c2 = torch.clamp(torch.tanh(-x2 / 2), min=0)
    loss = c1 * g + c2 * h
    return scale1 * loss if index == 0 else loss


def toy_losses(x: Tensor, scale1: float = 1.0) -> Tensor:
    """Points ``[..., 2]`` -> losses ``[..., 2]`` (L₁ multiplied by ``scale1``), see :func:`toy_loss`."""
    return torch.stack([toy_loss(x, 0, scale1), toy_loss(x, 1)], dim=-1)


class ToyObjective(nn.Module):
    """A parameter-free head: z ``[1, 2]`` -> the scalar loss Lᵢ(z)."""

    def __init__(self, index: int, scale1: float) -> None:
        super().__init__()
        self.index = index
        self.scale1 = scale1

    def forward(self, z: Tensor) -> Tensor:
        return toy_loss(z[0], self.index, self.scale1)


# ---------------------------------------------------------------------------------------------------
# The Pareto set and front, computed numerically


def non_dominated(losses: Tensor) -> Tensor:
    """Indices of the non-dominated rows of ``losses`` ``[N, 2]``, ordered by increasing first loss."""
    order = torch.argsort(losses[:, 1], stable=True)
    order = order[torch.argsort(losses[order, 0], stable=True)]
    second = losses[order, 1]
    best_before = torch.cat([second.new_full((1,), math.inf), torch.cummin(second, dim=0).values[:-1]])
    return order[second < best_before]


def _gradients(loss_fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """∇L₁ and ∇L₂ at each point ``[N, 2]`` (the losses of different points are independent)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        losses = loss_fn(x)
        (g1,) = torch.autograd.grad(losses[:, 0].sum(), x, retain_graph=True)
        (g2,) = torch.autograd.grad(losses[:, 1].sum(), x)
    return g1, g2


def _jacobian_det(loss_fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """det [∇L₁ ∇L₂] at each point ``[N, 2]``: zero exactly where the two gradients are collinear."""
    g1, g2 = _gradients(loss_fn, x)
    return g1[:, 0] * g2[:, 1] - g1[:, 1] * g2[:, 0]


def _bisect_columns(
    loss_fn: Callable[[Tensor], Tensor], x1: Tensor, lo: float, hi: float, iters: int = 45
) -> Tensor:
    """For each x₁, the x₂ in ``[lo, hi]`` where the Jacobian determinant changes sign (bisection).

    Columns without a sign change on ``[lo, hi]`` are dropped.
    """
    low, high = torch.full_like(x1, lo), torch.full_like(x1, hi)
    sign_low = torch.sign(_jacobian_det(loss_fn, torch.stack([x1, low], 1)))
    sign_high = torch.sign(_jacobian_det(loss_fn, torch.stack([x1, high], 1)))
    bracketed = sign_low * sign_high < 0
    for _ in range(iters):
        mid = (low + high) / 2
        same = torch.sign(_jacobian_det(loss_fn, torch.stack([x1, mid], 1))) == sign_low
        low, high = torch.where(same, mid, low), torch.where(same, high, mid)
    return torch.stack([x1, (low + high) / 2], 1)[bracketed]


@cache
def pareto(variant: str, coarse: int = 441, columns: int = 20001) -> tuple[Tensor, Tensor]:
    """The Pareto set ``[M, 2]`` and front ``[M, 2]`` (float64), ordered by increasing L₁.

    1. A ``coarse`` × ``coarse`` grid over :data:`BOUNDS` and a non-dominated filter locate the set:
       a thin band around x₂ ≈ −8.4 for x₁ ∈ [−7, 7]. The filter alone cannot pin it down: the losses
       barely change across the band, so grid points well off the set are not dominated by any other.
    2. In ``columns`` values of x₁ over the band, bisection finds the x₂ where ∇L₁ and ∇L₂ are collinear
       (Pareto stationarity for two objectives in the plane); a last non-dominated filter keeps the
       points where they are anti-parallel and not dominated. The columns are dense because at the
       front's ends L₂ (or L₁) changes linearly with x₁: 20001 put the ends within 1e-5 of the range.

    The set runs from (−7, −8.43) through (0, −8.3551) to (7, −8.43): the x₂ = −8.3552 line plotted by
    CAGrad and Nash-MTL is exact only at x₁ = 0. About 0.2 s on one CPU thread, once per variant.
    """
    loss_fn = partial(toy_losses, scale1=VARIANTS[variant].scale1)
    x1_min, x1_max, x2_min, x2_max = BOUNDS
    axis1 = torch.linspace(x1_min, x1_max, coarse, dtype=torch.float64)
    axis2 = torch.linspace(x2_min, x2_max, coarse, dtype=torch.float64)
    points = torch.cartesian_prod(axis1, axis2)
    band = points[non_dominated(loss_fn(points))]
    step = (x1_max - x1_min) / (coarse - 1)
    lo, hi = band.min(0).values - step, band.max(0).values + step
    x1 = torch.linspace(float(lo[0]), float(hi[0]), columns, dtype=torch.float64)
    candidates = _bisect_columns(loss_fn, x1, float(lo[1]), float(hi[1]))
    g1, g2 = _gradients(loss_fn, candidates)
    candidates = candidates[(g1 * g2).sum(1) < 0]
    losses = loss_fn(candidates)
    keep = non_dominated(losses)
    return candidates[keep], losses[keep]


def pareto_gap(losses: Tensor, front: Tensor) -> float:
    """Additive ε-indicator of ``losses`` ``[2]`` to the piecewise-linear ``front``, clipped at 0
    (infinite for non-finite losses).

    Both losses are first normalised by the front's range (ideal point -> 0, nadir point -> 1), so the
    gap is a fraction of that range and the same in both variants. The indicator
    min over front points p of max(L₁ − p₁, L₂ − p₂) is the ε for which L − ε(1, 1) lies on the front:
    along the diagonal, u = L₁ − L₂ stays fixed and v = L₁ + L₂ drops by 2ε, so ε = (v − v_front(u)) / 2;
    beyond the front's ends (|u| > 1) the nearest end gives ε = L₁ − 1 or L₂ − 1.
    """
    if not bool(torch.isfinite(losses).all()):
        return math.inf
    ideal, nadir = front.min(0).values, front.max(0).values
    point = (losses.to(front) - ideal) / (nadir - ideal)
    scaled = (front - ideal) / (nadir - ideal)
    u_front, v_front = scaled[:, 0] - scaled[:, 1], scaled[:, 0] + scaled[:, 1]
    u, v = point[0] - point[1], point[0] + point[1]
    if u >= u_front[-1]:
        gap = point[0] - 1
    elif u <= u_front[0]:
        gap = point[1] - 1
    else:
        right = int(torch.searchsorted(u_front, u.reshape(1)))
        t = (u - u_front[right - 1]) / (u_front[right] - u_front[right - 1])
        gap = (v - torch.lerp(v_front[right - 1], v_front[right], t)) / 2
    return max(float(gap), 0.0)


# ---------------------------------------------------------------------------------------------------
# The task


def _resolve_start(variant: str, start: int | Sequence[float]) -> tuple[float, float]:
    starts = VARIANTS[variant].starts
    if isinstance(start, int) and not isinstance(start, bool):
        if not 0 <= start < len(starts):
            raise ValueError(
                f"toy2d: start={start} is out of range for variant {variant!r} (0..{len(starts) - 1})"
            )
        return starts[start]
    if isinstance(start, Sequence) and not isinstance(start, str) and len(start) == 2:
        point = tuple(float(c) for c in start)
        if all(math.isfinite(c) for c in point):
            return point[0], point[1]
    raise ValueError(f"toy2d: start={start!r} must be an index into the variant's starts or a pair [x1, x2]")


@TASKS.register("toy2d")
class Toy2D(PointTask):
    """CAGrad / Nash-MTL / FAMO two-objective toy; the point x is the only (shared) parameter.

    Args:
        variant: ``"nashmtl"`` (L₁ × 0.1, 5 starts, 35k steps; FAMO uses it with 50k steps) or
            ``"cagrad"`` (unscaled, 3 starts, 100k steps).
        start: an index into the variant's published starts, or a point ``[x1, x2]``.

    Metrics: the two losses (as trained, so L₁ is scaled in ``nashmtl``), ``pareto_gap`` (see
    :func:`pareto_gap`) and ``on_front`` (1.0 when the gap is at most :data:`FRONT_TOLERANCE`).
    """

    description = "CAGrad / Nash-MTL two-objective toy in the plane (Adam on x, distance to the Pareto front)"

    def __init__(self, variant: str = "nashmtl", start: int | Sequence[float] = 0) -> None:
        super().__init__(("loss1", "loss2"))
        if variant not in VARIANTS:
            raise ValueError(f"toy2d: variant={variant!r} is not one of {sorted(VARIANTS)}")
        self.variant = variant
        self.scale1 = VARIANTS[variant].scale1
        self.start = _resolve_start(variant, start)
        self.train_defaults = MappingProxyType(
            {
                "optimizer": "adam",
                "lr": 1e-3,
                "steps": VARIANTS[variant].steps,
                "batch_size": None,
                "eval_every": 250,
                "clip_grad_norm": None,
            }
        )

    def build_model(self) -> MultiTaskModel:
        heads = [ToyObjective(i, self.scale1) for i in range(2)]
        return MultiTaskModel(Point(self.start), heads)

    def metrics(self) -> list[Metric]:
        return [
            Metric("loss1", False, "L1 as trained (x 0.1 in the nashmtl variant)"),
            Metric("loss2", False, "L2"),
            Metric("pareto_gap", False, "additive epsilon-indicator to the Pareto front, normalised", 0.0),
            Metric("on_front", True, f"1 when pareto_gap <= {FRONT_TOLERANCE}", low=0.0, high=1.0),
        ]

    @torch.no_grad()
    def evaluate(self, model: MultiTaskModel, split: str) -> dict[str, float]:
        x = self.point(model)
        losses = toy_losses(x, self.scale1)
        gap = pareto_gap(losses, pareto(self.variant)[1])
        return {
            "loss1": float(losses[0]),
            "loss2": float(losses[1]),
            "x1": float(x[0]),
            "x2": float(x[1]),
            "pareto_gap": gap,
            "on_front": float(gap <= FRONT_TOLERANCE),
        }

    def check_region(self, values: Mapping[str, float]) -> str | None:
        x1, x2 = values["x1"], values["x2"]
        if max(abs(x1), abs(x2)) > REGION:
            return f"x = ({x1:.3g}, {x2:.3g}) left the region |x1|, |x2| <= {REGION:g}"
        return None

    def landscape(self) -> Landscape:
        return Landscape(
            bounds=BOUNDS,
            losses=partial(toy_losses, scale1=self.scale1),
            pareto_set=pareto(self.variant)[0],
            trajectory=("x1", "x2"),
        )
