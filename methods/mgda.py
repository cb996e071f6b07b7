"""MGDA: the min-norm point of the convex hull of the task gradients (Sener & Koltun 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.method import GramianMethod, StepContext
from benchmark.registry import METHODS
from methods._checks import check_choice, check_integer, check_number
from methods._gramian import scale_free

NORMALIZATIONS = ("none", "l2", "loss", "loss+")
_CHECK_EVERY = 25  # Frank-Wolfe steps between two convergence tests (each one is a host sync on GPU)
_WOLFE_CHECK_EVERY = 4  # Wolfe steps between two tests; steps after convergence change nothing
_DROP_ROUNDS = 2  # rounds of the guess that starts Wolfe's algorithm


def line_search(v1v1: Tensor, v1v2: Tensor, v2v2: Tensor) -> Tensor:
    """Weight w in [0, 1] minimising ``‖(1 − w) x₁ + w x₂‖²`` from the three dot products (paper Alg. 1)."""
    gap = v1v1 - v1v2
    distance = (gap + v2v2 - v1v2).clamp_min(torch.finfo(gap.dtype).tiny)  # ‖x₁ − x₂‖²
    return (gap / distance).clamp(0.0, 1.0)


def affine_min_norm(bordered: Tensor, identity: Tensor, support: Tensor) -> Tensor:
    """β minimising ``βᵀ G β`` subject to ``Σ β = 1`` and ``β = 0`` off ``support``, ``[T]``.

    ``bordered`` is ``[[G, 1], [1ᵀ, 0]]``; the system ``[G_SS 1; 1ᵀ 0] [β; −λ] = [0; 1]`` is padded to
    a fixed size with identity rows off the support. The result is non-finite or meaningless where the
    supported gradients are affinely dependent (a singular system).
    """
    inside = F.pad(support, (0, 1), value=True)
    system = torch.where(inside[:, None] & inside[None, :], bordered, identity)
    return torch.linalg.solve_ex(system, identity[-1])[0][:-1]


def wolfe_step(
    gramian: Tensor, bordered: Tensor, identity: Tensor, alpha: Tensor, support: Tensor, tolerance: float
) -> tuple[Tensor, Tensor, Tensor]:
    """One step of Wolfe's min-norm-point algorithm, branch-free: ``(α, support, converged)``.

    β is the affine min-norm point of the support. If β > 0 on it, α = β (a "major" step) and the
    vertex ``t = argmin (G α)`` joins the support unless the duality gap ``αᵀGα − (Gα)_t`` is within
    ``tolerance`` (then α is optimal and further steps change nothing). Otherwise α moves towards β
    until a weight reaches 0 and that vertex leaves the support (a "minor" step). A singular system
    leaves α as it is.
    """
    beta = affine_min_norm(bordered, identity, support)
    finite = torch.isfinite(beta).all()
    toward = torch.where(finite, beta, alpha) - alpha
    ratios = torch.where(
        support & (alpha + toward <= 0), alpha / (-toward).clamp_min(torch.finfo(alpha.dtype).tiny), 2.0
    )
    theta, leaving = ratios.min(0)
    positive = theta > 1  # no vertex blocks the way to β
    alpha = torch.where(support, alpha + theta.clamp(max=1.0) * toward, 0.0).clamp_min(0.0)
    alpha[leaving] = torch.where(positive, alpha[leaving], 0.0)
    g_alpha = gramian @ alpha
    value, (lowest, entering) = alpha @ g_alpha, g_alpha.min(0)
    grows = finite & positive & (value - lowest > tolerance * (value + 1))
    support = torch.where(positive, support, alpha > 0)
    support[entering] |= grows
    return alpha, support, finite & positive & ~grows


@torch.no_grad()
def wolfe_min_norm(gramian: Tensor, max_steps: int) -> Tensor:
    """α on the simplex minimising ``αᵀ G α`` by Wolfe's min-norm-point algorithm (Wolfe 1976), ``[T]``.

    Exact up to rounding: it ends on the affine min-norm point of the optimal support. Runs in float64
    on ``G`` scaled to unit largest diagonal. It starts from the better of the shortest gradient and a
    guess: the affine min-norm point of all gradients, after dropping, ``_DROP_ROUNDS`` times, those
    whose affine weight is not positive (often the optimum already). It stops when the duality gap is
    within 16 ulps of the input dtype (tested at the first step and every ``_WOLFE_CHECK_EVERY``) or
    after ``max_steps``, leaving a feasible α either way.
    """
    num_tasks = gramian.shape[0]
    scaled = gramian.double()
    scaled = scaled / scaled.diagonal().max().clamp_min(torch.finfo(scaled.dtype).tiny)
    bordered = F.pad(scaled, (0, 1, 0, 1), value=1.0)
    bordered[num_tasks, num_tasks] = 0.0
    identity = torch.eye(num_tasks + 1, dtype=scaled.dtype, device=scaled.device)
    support = torch.ones(num_tasks, dtype=torch.bool, device=scaled.device)
    for _ in range(_DROP_ROUNDS):
        support &= affine_min_norm(bordered, identity, support) > 0
    beta = affine_min_norm(bordered, identity, support)
    guess = torch.where(support, beta, 0.0)
    shortest = F.one_hot(scaled.diagonal().argmin(), num_tasks).to(scaled.dtype)
    usable = torch.isfinite(beta).all() & (~support | (beta > 0)).all() & support.any()
    alpha = torch.where(usable & (guess @ scaled @ guess < scaled.diagonal().min()), guess, shortest)
    support = alpha > 0
    tolerance = 16 * torch.finfo(gramian.dtype).eps  # on the gap, relative to αᵀGα + the largest ‖gᵢ‖²
    for step in range(1, max_steps + 1):
        alpha, support, converged = wolfe_step(scaled, bordered, identity, alpha, support, tolerance)
        if (step == 1 or step % _WOLFE_CHECK_EVERY == 0) and converged:
            break
    return alpha.to(gramian.dtype)


@torch.no_grad()
def min_norm_weights(gramian: Tensor, max_iter: int = 250, stop_crit: float = 1e-5) -> Tensor:
    """α on the simplex minimising ``αᵀ G α``: Wolfe's exact solver, then Frank-Wolfe (paper Alg. 2).

    Each Frank-Wolfe step moves α towards the vertex ``e_t``, ``t = argmin (G α)``, by the exact line
    search. It stops after ``max_iter`` steps, or when a step changes α by less than ``stop_crit`` in
    L1 norm; that test runs at the first step (where it ends the loop when Wolfe's α is optimal) and
    every ``_CHECK_EVERY`` steps after, so the loop syncs the host rarely.
    """
    alpha = wolfe_min_norm(gramian, 4 * len(gramian) + 8)
    state = torch.stack([alpha, gramian @ alpha])  # rows: α and G α, updated together
    alpha, g_alpha = state
    vertices = torch.stack([torch.eye(len(alpha), dtype=state.dtype, device=state.device), gramian], 1)
    diagonal = gramian.diagonal()
    v1v1 = torch.dot(alpha, g_alpha)
    for step in range(1, max_iter + 1):
        v1v2, t = g_alpha.min(0)
        w = line_search(v1v1, v1v2, diagonal[t])
        checked = step == 1 or step % _CHECK_EVERY == 0
        if checked and 2 * w * (1 - alpha[t]) < stop_crit:  # = ‖Δα‖₁ of this step
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
class MGDA(GramianMethod):
    """MGDA, Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective Optimization"
    (https://arxiv.org/abs/1810.04650): the update is ``Σᵢ αᵢ gᵢ`` with α the min-norm point of the
    convex hull of the gradients (the paper's min-norm problem, on the T x T Gramian), found by Frank-Wolfe
    (Algorithm 2 with the closed-form line search of Algorithm 1). At the feature level (gradients
    w.r.t. the shared representation) this is MGDA-UB.

    Args:
        normalization: what each gradient is divided by before solving, as in the authors' code:
            ``"none"`` (default: the paper; their code comments that normalising is "optional and not
            included in the paper", though their CelebA config ``sample.json`` uses ``"loss+"``),
            ``"l2"`` ‖gᵢ‖, ``"loss"`` Lᵢ, ``"loss+"`` Lᵢ‖gᵢ‖ (the last two read ``ctx.losses`` and assume
            positive losses). As in their code, α then weights the raw gradients.
        max_iter: Frank-Wolfe steps at most (their ``MAX_ITER``).
        stop_crit: stop when a step changes α by less than this in L1 norm (their ``STOP_CRIT``).

    Departures: Frank-Wolfe starts from the exact min-norm point, found by Wolfe's min-norm-point
    algorithm (``wolfe_min_norm``, a few linear solves of size T + 1), instead of the best pair of
    gradients as in the authors' ``MinNormSolver``; its first step then has length 0 and ends the loop,
    so the update is the problem's optimum rather than a Frank-Wolfe approximation of it (their code
    stops up to a few percent of ‖gᵢ‖ away), and costs far fewer steps. The line search clips to
    [0, 1] as in the paper (the code clips to [0.001, 0.999]); the stopping rule is tested at the first
    step and every 25 steps after, to avoid a host sync per step.
    """

    description = "Min-norm point of the convex hull of the task gradients, solved on the Gramian"
    citation = "Sener & Koltun 2018, NeurIPS"
    level = "param"
    deterministic = True
    permutation_invariant = True
    linear_under_scaling = True
    non_conflicting = True

    def __init__(
        self, num_tasks: int, normalization: str = "none", max_iter: int = 250, stop_crit: float = 1e-5
    ) -> None:
        super().__init__(num_tasks)
        self.normalization = check_choice("mgda", "normalization", normalization, NORMALIZATIONS)
        self.max_iter = check_integer("mgda", "max_iter", max_iter)
        self.stop_crit = check_number("mgda", "stop_crit", stop_crit)

    def gramian_weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        divisors = gradient_normalizers(gramian, ctx.losses, self.normalization)
        normalized = scale_free(gramian / (divisors[:, None] * divisors[None, :]))
        return min_norm_weights(normalized, self.max_iter, self.stop_crit)
