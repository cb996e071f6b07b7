"""CAGrad: conflict-averse gradient descent (Liu et al. 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.method import GramianMethod, StepContext
from benchmark.registry import METHODS
from methods._checks import check_choice, check_integer, check_number
from methods._gramian import scale_free

RESCALES = (0, 1, 2)
_SMOOTHING = 1e-8  # ε of ‖g_w‖ ≈ √(wᵀGw + ε²) on the scale-free Gramian: the norm's kink at g_w = 0
_MIN_GAP = 1e-14  # the interior-point barrier parameter stops decreasing here (float64 arithmetic)
_CHECK_EVERY = 4  # interior-point steps between two convergence tests (each one is a host sync on GPU)
_TOLERANCE = 1e-12  # converged once the mean complementarity w ∘ z is below this


def _steps_to_boundary(values: Tensor, directions: Tensor) -> Tensor:
    """Per row, the largest ``a ≤ 1`` with ``values + a · directions ≥ 0`` (``values > 0``), ``[R, 1]``.

    Where a direction is ≥ 0 the ratio is huge (or inf) and never the minimum below 1.
    """
    limits = values / (-directions).clamp_min(torch.finfo(values.dtype).tiny)
    return limits.amin(-1, keepdim=True).clamp_max(1.0)


def _lu_solve(factors: Tensor, pivots: Tensor, rhs: Tensor) -> Tensor:
    """The solution of ``A x = rhs`` from ``torch.linalg.lu_factor_ex(A)``, ``rhs`` a vector."""
    return torch.linalg.lu_solve(factors, pivots, rhs.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def conflict_averse_weights(gramian: Tensor, c: float, max_iter: int = 20) -> Tensor:
    """w on the simplex minimising ``F(w) = g_wᵀ g₀ + c ‖g₀‖ ‖g_w‖`` (the dual of CAGrad's max-min
    problem), from the Gramian: ``g_wᵀ g₀ = (G 1/T)ᵀ w`` and ``‖g_w‖² = wᵀ G w``.

    A primal-dual interior-point method with Mehrotra's predictor-corrector on the KKT conditions
    ``∇F(w) − z − ν 1 = 0``, ``w ∘ z = μ``, ``1ᵀ w = 1`` (z ≥ 0 the multipliers of w ≥ 0): each
    of its steps factorises one (T + 1) x (T + 1) Newton system and solves it twice. It stops after
    ``max_iter`` steps or once the mean of ``w ∘ z`` is below 1e-12 (tested every 4 steps; 12 to 16
    steps are typical). ``‖g_w‖`` is smoothed to ``√(wᵀGw + ε²)``, ε = 1e-8 relative to the largest
    gradient norm, for the case where 0 is in the convex hull of the gradients.
    """
    num_tasks = gramian.shape[0]
    hull_dot = gramian.mean(1)  # G 1/T, the gradient of g_wᵀ g₀
    radius = c * hull_dot.mean().clamp_min(0).sqrt()  # c ‖g₀‖
    state = gramian.new_ones(2, num_tasks)  # rows: w (primal, on the simplex) and z (dual)
    state[0] = 1.0 / num_tasks
    kkt = gramian.new_zeros(num_tasks + 1, num_tasks + 1)  # [[∇²F + Z/W, -1], [1ᵀ, 0]]
    kkt[:num_tasks, num_tasks] = -1.0
    kkt[num_tasks, :num_tasks] = 1.0
    block = kkt[:num_tasks, :num_tasks]
    for step in range(max_iter):
        w, z = state
        gap = (w @ z / num_tasks).clamp_min(_MIN_GAP)  # the barrier parameter μ
        if step % _CHECK_EVERY == _CHECK_EVERY - 1 and gap < _TOLERANCE:
            break
        g_w = gramian @ w
        inverse_norm = (w @ g_w).clamp_min(0).add(_SMOOTHING**2).rsqrt()  # 1 / ‖g_w‖
        coef = radius * inverse_norm
        outer = g_w * (coef * inverse_norm**2).sqrt()
        torch.sub(coef * gramian, torch.outer(outer, outer), out=block)  # ∇²F
        block.diagonal().add_(z / w)
        factors, pivots, _ = torch.linalg.lu_factor_ex(kkt)
        # The Newton step towards w ∘ z = t: [∇²F + Z/W, −1; 1ᵀ, 0] [dw; ν] = [t/w − ∇F; 1 − Σw],
        # then dz = (t − w z − z dw) / w.
        grad = hull_dot + coef * g_w
        infeasibility = (1 - w.sum()).reshape(1)
        dw = _lu_solve(factors, pivots, torch.cat([-grad, infeasibility]))[:num_tasks]
        predictor = torch.stack([dw, -z - z * dw / w])  # t = 0: the affine-scaling direction
        reach = state + _steps_to_boundary(state, predictor) * predictor
        centring = (reach[0] @ reach[1] / num_tasks / gap).clamp(0, 1) ** 3
        target = (centring * gap).clamp_min(_MIN_GAP) - predictor[0] * predictor[1]
        dw = _lu_solve(factors, pivots, torch.cat([target / w - grad, infeasibility]))[:num_tasks]
        corrector = torch.stack([dw, (target - z * dw) / w - z])
        state = state + 0.99 * _steps_to_boundary(state, corrector).min() * corrector
    return state[0]


@METHODS.register("cagrad")
class CAGrad(GramianMethod):
    """CAGrad, Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning"
    (https://arxiv.org/abs/2110.14048), Algorithm 1 with the options of the authors' code
    (``Cranial-XIX/CAGrad``).

    The update maximises the worst task improvement ``min_i g_iᵀ d`` in the ball
    ``‖d − g₀‖ ≤ c ‖g₀‖`` around the mean gradient ``g₀``. By duality it is
    ``d = g₀ + c ‖g₀‖ g_w / ‖g_w‖`` with w on the simplex minimising ``g_wᵀ g₀ + c ‖g₀‖ ‖g_w‖``; w is
    found on the scale-free Gramian by :func:`conflict_averse_weights` (an interior-point method, accurate
    to ~1e-9 in the objective where 0 is not in the convex hull of the gradients). As in the authors'
    code the update is then multiplied by T ("to match the sum loss") and divided by the ``rescale``
    factor.

    Args:
        c: the radius of the ball relative to ``‖g₀‖`` (0.4, the authors' NYUv2 setting). With
            ``c ≥ 1`` the ball holds d = 0, so the max-min is ≥ 0: the update conflicts with no task.
        rescale: the authors' option, the update is divided by 1 (``0``), ``1 + c²`` (``1``, their
            default) or ``1 + c`` (``2``).
        max_iter: interior-point steps at most (see :func:`conflict_averse_weights`).

    Departures: the authors solve for w with ``scipy.optimize.minimize`` (SLSQP, default tolerance) on
    the raw Gramian with ``+1e-8`` inside the square root and ``+1e-8`` in ``‖g_w‖``; here both guards
    are ``ε = 1e-8`` relative to the scale-free Gramian, so the update is exactly linear in the
    gradients. Where 0 is in the convex hull of the gradients (duplicate, opposite or zero gradients)
    and the optimum has ``g_w = 0``, the direction of ``g_w`` is undefined and the update is only
    approximate (it stays finite: ``‖d − g₀‖ ≤ c ‖g₀‖``), as with any solver.
    """

    description = "Maximise the worst task's improvement within a ball around the mean gradient"
    citation = "Liu et al. 2021, NeurIPS"
    level = "param"
    deterministic = True
    permutation_invariant = True
    linear_under_scaling = True

    def __init__(self, num_tasks: int, c: float = 0.4, rescale: int = 1, max_iter: int = 20) -> None:
        super().__init__(num_tasks)
        self.c = check_number("cagrad", "c", c)
        self.rescale = check_choice("cagrad", "rescale", rescale, RESCALES)
        self.max_iter = check_integer("cagrad", "max_iter", max_iter, low=1)

    def gramian_weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        normalized = scale_free(gramian.double())
        w = conflict_averse_weights(normalized, self.c, self.max_iter)
        radius = self.c * normalized.mean().clamp_min(0).sqrt()  # c ‖g₀‖
        norm = (w @ normalized @ w).clamp_min(0).add(_SMOOTHING**2).sqrt()  # ‖g_w‖
        mean = torch.full_like(w, 1.0 / self.num_tasks)
        divisor = (1.0, 1.0 + self.c**2, 1.0 + self.c)[self.rescale]
        weights = (mean + radius / norm * w) * (self.num_tasks / divisor)
        return weights.to(gramian.dtype)
