"""MGDA: the min-norm point of the convex hull of the task gradients (Sener & Koltun 2018)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from benchmark.method import Method, StepContext
from benchmark.registry import METHODS
from methods._gramian import scale_free

NORMALIZATIONS = ("none", "l2", "loss", "loss+")
_CHECK_EVERY = 25  # Frank-Wolfe steps between two convergence tests (each one is a host sync on GPU)


def line_search(v1v1: Tensor, v1v2: Tensor, v2v2: Tensor) -> Tensor:
    """Weight w in [0, 1] minimising ``‖(1 − w) x₁ + w x₂‖²`` from the three dot products (paper Alg. 1)."""
    gap = v1v1 - v1v2
    distance = (gap + v2v2 - v1v2).clamp_min(torch.finfo(gap.dtype).tiny)  # ‖x₁ − x₂‖²
    return (gap / distance).clamp(0.0, 1.0)


def best_pair(gramian: Tensor) -> Tensor:
    """The simplex point of least norm among all pairs of vertices (the solver's start), ``[T]``."""
    num_tasks = gramian.shape[0]
    diagonal = gramian.diagonal()
    v1v1, v2v2 = diagonal[:, None], diagonal[None, :]
    w = line_search(v1v1, gramian, v2v2)
    cost = (1 - w) ** 2 * v1v1 + 2 * w * (1 - w) * gramian + w**2 * v2v2
    flat = cost.argmin()
    index, weight = torch.stack([flat // num_tasks, flat % num_tasks]), w.flatten()[flat]
    alpha = gramian.new_zeros(num_tasks)
    return alpha.index_add_(0, index, torch.stack([1 - weight, weight]))


@torch.no_grad()
def min_norm_weights(gramian: Tensor, max_iter: int = 250, stop_crit: float = 1e-5) -> Tensor:
    """α on the simplex minimising ``αᵀ G α``: the best pair, then Frank-Wolfe (paper Algorithm 2).

    Each step moves α towards the vertex ``e_t``, ``t = argmin (G α)``, by the exact line search.
    It stops after ``max_iter`` steps, or when a step changes α by less than ``stop_crit`` in L1 norm;
    that test runs every ``_CHECK_EVERY`` steps only, so the loop syncs the host rarely.
    """
    alpha = best_pair(gramian)
    if gramian.shape[0] < 3:  # the best pair is exact
        return alpha
    state = torch.stack([alpha, gramian @ alpha])  # rows: α and G α, updated together
    alpha, g_alpha = state
    vertices = torch.stack([torch.eye(len(alpha), dtype=state.dtype, device=state.device), gramian], 1)
    diagonal = gramian.diagonal()
    v1v1 = torch.dot(alpha, g_alpha)
    for step in range(1, max_iter + 1):
        v1v2, t = g_alpha.min(0)
        w = line_search(v1v1, v1v2, diagonal[t])
        if step % _CHECK_EVERY == 0 and 2 * w * (1 - alpha[t]) < stop_crit:  # = ‖Δα‖₁ of this step
            break
        state.lerp_(vertices[t], w)
        v1v1 = torch.dot(alpha, g_alpha)
    return alpha


def gradient_normalizers(gramian: Tensor, losses: Tensor | None, normalization: str) -> Tensor:
    """The divisor of each gradient, as in the authors' ``gradient_normalizers``; 0 becomes 1."""
    if normalization == "none":
        return gramian.new_ones(gramian.shape[0])
    norms = gramian.diagonal().clamp_min(0).sqrt()
    if normalization == "l2":
        divisors = norms
    else:
        losses = _task_losses(losses, gramian, normalization)
        divisors = losses if normalization == "loss" else losses * norms
    return torch.where(divisors == 0, torch.ones_like(divisors), divisors)


def _task_losses(losses: Tensor | None, gramian: Tensor, normalization: str) -> Tensor:
    """``ctx.losses`` as a ``[T]`` vector like the Gramian; ``ValueError`` when absent or mis-sized."""
    num_tasks = gramian.shape[0]
    if losses is None or losses.numel() != num_tasks:
        got = None if losses is None else tuple(losses.shape)
        raise ValueError(
            f"mgda: normalization={normalization!r} needs ctx.losses of {num_tasks} values, got {got}"
        )
    return losses.to(device=gramian.device, dtype=gramian.dtype).reshape(-1)


@METHODS.register("mgda")
class MGDA(Method):
    """MGDA, Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective Optimization"
    (https://arxiv.org/abs/1810.04650): the update is ``Σᵢ αᵢ gᵢ`` with α the min-norm point of the
    convex hull of the gradients, found by Frank-Wolfe on the T x T Gramian (Algorithm 2 with the
    closed-form line search of Algorithm 1, started, as in the authors' ``MinNormSolver``, from the best
    pair of gradients). At the feature level (gradients w.r.t. the shared representation) this is MGDA-UB.

    Args:
        normalization: what each gradient is divided by before solving, as in the authors' code:
            ``"none"`` (default: the paper; their code comments that normalising is "optional and not
            included in the paper", though their CelebA config ``sample.json`` uses ``"loss+"``),
            ``"l2"`` ‖gᵢ‖, ``"loss"`` Lᵢ, ``"loss+"`` Lᵢ‖gᵢ‖ (the last two read ``ctx.losses`` and assume
            positive losses). As in their code, α then weights the raw gradients.
        max_iter: Frank-Wolfe steps at most (their ``MAX_ITER``).
        stop_crit: stop when a step changes α by less than this in L1 norm (their ``STOP_CRIT``).

    Departures: the line search clips to [0, 1] as in the paper (the code clips to [0.001, 0.999]);
    the stopping rule is tested every 25 steps instead of every step, to avoid a host sync per step.
    """

    description = "Min-norm point of the convex hull of the task gradients (Frank-Wolfe on the Gramian)"
    citation = "Sener & Koltun 2018, NeurIPS"
    level = "param"

    def __init__(
        self, num_tasks: int, normalization: str = "none", max_iter: int = 250, stop_crit: float = 1e-5
    ) -> None:
        super().__init__(num_tasks)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"mgda: normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        if not (isinstance(max_iter, int) and max_iter >= 0):
            raise ValueError(f"mgda: max_iter must be an integer >= 0, got {max_iter!r}")
        if not (isinstance(stop_crit, int | float) and math.isfinite(stop_crit) and stop_crit >= 0):
            raise ValueError(f"mgda: stop_crit must be a finite number >= 0, got {stop_crit!r}")
        self.normalization = normalization
        self.max_iter = max_iter
        self.stop_crit = stop_crit

    def combine(self, grads: Tensor, ctx: StepContext | None = None) -> Tensor:
        self.check_grads(grads)
        ctx = ctx or StepContext()
        matrix = grads.flatten(1)
        gramian = matrix @ matrix.T
        divisors = gradient_normalizers(gramian, ctx.losses, self.normalization)
        normalized = scale_free(gramian / (divisors[:, None] * divisors[None, :]))
        alpha = min_norm_weights(normalized, self.max_iter, self.stop_crit)
        return (alpha @ matrix).view(grads.shape[1:])
