"""Two losses whose sum has stationary points that are not joint minima: GradDrop's joint-minimum claim.

Chen et al. 2020, "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout",
NeurIPS, Sec. 3, argue that GradDrop can only settle where every ∇Lᵢ is zero (a joint minimum): at a
scalar where the gradients disagree in sign, the purity P is strictly between 0 and 1, so each step
keeps one sign at random and moves. Equal weighting stops wherever Σᵢ∇Lᵢ = 0. This toy makes the two
differ (DESIGN §4's last check, §5). For x ∈ Rᵈ, Lᵢ(x) = Σₖ ℓᵢ(xₖ), one profile per coordinate u:

    h(u)  = Huber(u)                  = ½u² for |u| ≤ 1, |u| − ½ beyond
    S(u)  = K min(h(u), ½) + (|u| − R)₊² + b (1 − cos(2πu / p))         (the summed loss)
    ℓ₁(u) = h(u),   ℓ₂(u) = S(u) − h(u)

with K = 6, R = 3, b = 0.02, p = 0.5. Both ℓᵢ are ≥ 0 and zero only at u = 0, so x = 0 is the one joint
minimum (and the whole Pareto set). On |u| ≤ 1 both gradients point away from 0 (ℓ₁' = u, ℓ₂' ≈ 5u): every
method descends to 0. On the terrace 1 < |u| < R, ℓ₁' = sign(u) and ℓ₂' = −sign(u) + b(2π/p) sin(2πu/p):
the two unit forces cancel and the sum is a ripple of depth 2b whose wells (every p) are stationary
points of ΣLᵢ, strict local minima, where the gradients are ±1, non-zero and opposite. Beyond R a
quadratic wall sends both back.

From a start on the terrace, gradient descent on the sum settles in a ripple well and stays. GradDrop's
update there is ∇ℓ₁ or ∇ℓ₂ (P = ½: a fair coin per coordinate), a random walk with steps of the full
gradient size that the shallow wells cannot hold; in expectation it still follows Σᵢ∇Lᵢ (E[update] =
Σᵢ∇Lᵢ for f(P) = P), so it drifts nowhere but diffuses off the terrace, then descends to 0, where both
gradients vanish and it stops. With SGD (the default), each step is the gradient itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.registry import TASKS
from benchmark.task import Landscape, Metric, MultiTaskModel
from tasks._point import Point, PointTask

INNER_SLOPE = 6.0
"""K: the summed loss is K h(u) on |u| ≤ 1."""

TERRACE_END = 3.0
"""R: the terrace 1 < |u| < R, where the two losses' gradients cancel; starts are drawn in [−R, R]ᵈ."""

RIPPLE = (0.02, 0.5)
"""b and p: amplitude and period of the ripple that makes the terrace's stationary points strict minima."""

JOINT_TOLERANCE = 1e-3
"""A run ends in the joint minimum when ‖x‖ is at most this."""


def profile_losses(u: Tensor) -> Tensor:
    """Coordinates ``[...]`` -> per-coordinate losses ``[..., 2]``: (ℓ₁(u), ℓ₂(u)) of the module docstring."""
    huber = F.huber_loss(u, torch.zeros_like(u), reduction="none", delta=1.0)
    amplitude, period = RIPPLE
    summed = (
        INNER_SLOPE * torch.clamp(huber, max=0.5)
        + torch.clamp(u.abs() - TERRACE_END, min=0.0) ** 2
        + amplitude * (1 - torch.cos(2 * math.pi * u / period))
    )
    return torch.stack([huber, summed - huber], dim=-1)


def sign_conflict_losses(x: Tensor) -> Tensor:
    """Points ``[..., d]`` -> the two losses ``[..., 2]``, Lᵢ(x) = Σₖ ℓᵢ(xₖ)."""
    return profile_losses(x).sum(dim=-2)


def start_point(dim: int, start: int) -> tuple[float, ...]:
    """Start k: uniform in [−R, R]ᵈ, drawn with ``numpy.random.default_rng(k)``."""
    rng = np.random.default_rng(start)
    return tuple(float(c) for c in rng.uniform(-TERRACE_END, TERRACE_END, dim))


class Loss(nn.Module):
    """A parameter-free head: z ``[1, d]`` -> Lᵢ(z)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, z: Tensor) -> Tensor:
        return sign_conflict_losses(z[0])[self.index]


def _resolve_start(dim: int, start: int | Sequence[float]) -> tuple[float, ...]:
    if isinstance(start, int) and not isinstance(start, bool):
        if start < 0:
            raise ValueError(f"sign_conflict: start={start} must be >= 0")
        return start_point(dim, start)
    numbers = isinstance(start, Sequence) and not isinstance(start, str) and len(start) == dim
    if numbers and all(isinstance(c, int | float) and not isinstance(c, bool) for c in start):
        point = tuple(float(c) for c in start)
        if all(math.isfinite(c) for c in point):
            return point
    raise ValueError(f"sign_conflict: start={start!r} must be an index >= 0 or a point of {dim} numbers")


@TASKS.register("sign_conflict")
class SignConflict(PointTask):
    """Two losses on x ∈ Rᵈ whose sum has spurious stationary points (see the module docstring).

    Args:
        dim: d ≥ 1, the number of coordinates (each an independent copy of the profile).
        start: the index k of a seeded start (:func:`start_point`), or a point of d numbers.

    Deterministic: the start is a task parameter (a suite grids over ``start``; the share of starts
    ending in the joint minimum is the mean of ``joint_min`` in the report). Methods that draw random
    numbers (GradDrop) still differ by seed. No data, so no split: evaluation is on ``train``.

    Metrics: ``joint_min`` (1.0 when ‖x‖ ≤ :data:`JOINT_TOLERANCE`) and ``joint_distance`` (‖x‖, the
    distance to the joint minimum); diagnostics ``loss1``, ``loss2``, ``sum_grad_norm`` (‖Σᵢ∇Lᵢ‖: small
    where the sum is stationary) and, for d = 2, the point ``x1``, ``x2``.
    """

    description = "Two losses whose sum stalls at points that are not joint minima (GradDrop's claim)"
    train_defaults = MappingProxyType(
        {"optimizer": "sgd", "lr": 0.1, "steps": 1000, "batch_size": None, "eval_every": 50}
    )

    def __init__(self, dim: int = 2, start: int | Sequence[float] = 0) -> None:
        super().__init__(("loss1", "loss2"))
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"sign_conflict: dim={dim!r} must be an integer >= 1")
        self.dim = dim
        self.start = _resolve_start(dim, start)

    def build_model(self) -> MultiTaskModel:
        return MultiTaskModel(Point(self.start), [Loss(0), Loss(1)])

    def metrics(self) -> list[Metric]:
        return [
            Metric("joint_min", True, f"1 when the distance to the joint minimum is <= {JOINT_TOLERANCE}"),
            Metric("joint_distance", False, "distance from x to the joint minimum x = 0"),
        ]

    @torch.no_grad()
    def evaluate(self, model: MultiTaskModel, split: str) -> dict[str, float]:
        x = self.point(model)
        with torch.enable_grad():
            point = x.clone().requires_grad_(True)
            losses = sign_conflict_losses(point)
            (summed,) = torch.autograd.grad(losses.sum(), point)
        distance = float(torch.linalg.vector_norm(x))
        values = {
            "joint_min": float(distance <= JOINT_TOLERANCE),
            "joint_distance": distance,
            "loss1": float(losses[0]),
            "loss2": float(losses[1]),
            "sum_grad_norm": float(torch.linalg.vector_norm(summed)),
        }
        if self.dim == 2:
            values.update(x1=float(x[0]), x2=float(x[1]))
        return values

    def landscape(self) -> Landscape | None:
        if self.dim != 2:
            return None
        bound = TERRACE_END + 1
        return Landscape(
            bounds=(-bound, bound, -bound, bound),
            losses=sign_conflict_losses,
            pareto_set=torch.zeros(1, 2, dtype=torch.float64),
            trajectory=("x1", "x2"),
        )
