"""Batched projection onto the dual cone of the gradients, from their Gramian (UPGrad, DualProj)."""

from __future__ import annotations

import torch
from torch import Tensor

_PIVOT_RIDGE = 1e-8  # ridge of the first pivoting pass on an ill-posed problem (scaled Gramian)
_WELL_POSED = 1e-4  # smallest eigenvalue of the scaled Gramian from which pivoting needs no ridge
_FULL_EXCHANGES = 3  # block exchanges allowed without progress before the single-index backup rule
_TOLERANCE = 1e-12  # sign tolerance of the optimality test, relative to the size of u and w


@torch.no_grad()
def project_weights(gramian: Tensor, targets: Tensor, reg_eps: float = 0.0) -> Tensor:
    """For each row u of ``targets`` ``[B, T]``, the v minimising ``vᵀ (G + ε I) v`` subject to
    ``v ≥ u``, with G the Gramian divided by its trace and ``ε = reg_eps``.

    With ``G = J Jᵀ`` and ``ε = 0``, ``Jᵀ v`` is the projection of ``Jᵀ u`` onto the dual cone
    ``{x : J x ≥ 0}`` (Quinton & Rey 2024, Proposition 1). The trace normalisation (TorchJD's) makes v
    the same for every scale of J.

    Solved in float64 by :func:`pivot` in the variables ``ṽ = v ⊙ √diag(G)``, whose Gramian has a unit
    diagonal (zero gradients keep scale 1). When that Gramian is ill-posed (smallest eigenvalue below
    ``_WELL_POSED``, e.g. linearly dependent gradients), pivoting first runs with the ridge
    ``_PIVOT_RIDGE`` added, which keeps it finite and accurate, then resumes from the free sets found
    without it (usually one solve); the rows this second pass leaves unsolved after ``10 T`` steps
    keep the first solution.
    """
    matrix = gramian.to(torch.float64)
    matrix = matrix / matrix.diagonal().sum().clamp_min(torch.finfo(matrix.dtype).tiny)
    diagonal = matrix.diagonal()
    scales = torch.where(diagonal > 0, diagonal.clamp_min(torch.finfo(matrix.dtype).tiny).rsqrt(), 1.0)
    scaled = matrix * scales[:, None] * scales[None, :]
    ridge = torch.diag(reg_eps * scales**2)  # ε I in the original variables
    targets = targets.to(matrix.dtype) / scales
    free = torch.zeros(targets.shape, dtype=torch.bool, device=matrix.device)
    eye = torch.eye(len(matrix), dtype=matrix.dtype, device=matrix.device)
    if torch.linalg.cholesky_ex(scaled + ridge - _WELL_POSED * eye).info == 0:
        slack, _, _ = pivot(scaled + ridge, targets, free)
    else:
        slack, free, _ = pivot(scaled + ridge + _PIVOT_RIDGE * eye, targets, free)
        exact, _, unsolved = pivot(scaled + ridge, targets, free)
        slack = torch.where(unsolved[:, None], slack, exact)
    return (targets + slack.clamp_min(0)) * scales


def pivot(
    gramian: Tensor, targets: Tensor, free: Tensor, max_iter: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Block principal pivoting (Júdice & Pires 1994; Kim & Park 2011, Algorithm 2) for every row at
    once, from the free sets ``free`` ``[B, T]``: returns ``w = v − u``, the final free sets, and which
    rows are not optimal yet (``[B]`` bool, all false unless ``max_iter`` ran out).

    ``v = u + w`` is optimal when the linear complementarity conditions ``w ≥ 0``, ``y = G v ≥ 0``,
    ``wᵀ y = 0`` hold. A row's free set F gives ``w`` by ``G_FF w_F = −(G u)_F``, ``w = 0`` off F; the
    indices that break a sign condition (``w_F < 0``, or ``y < 0`` off F) then switch sides: all of them
    while their count keeps falling, else, after a few tries, only the largest one, the backup rule that
    makes the method finite for positive definite G. Each step solves the systems of the rows whose
    free set changed in one batched call (:func:`solve_on_free_sets`), and syncs the host to find those
    rows; the loop stops when no row breaks a condition, or after ``max_iter`` steps (default ``10 T``).
    """
    num_rows, size = targets.shape
    max_iter = 10 * size if max_iter is None else max_iter
    device = gramian.device
    products = targets @ gramian  # row b: (G u_b)ᵀ, as G is symmetric
    scale = targets.abs().amax(1, keepdim=True).clamp_min(torch.finfo(gramian.dtype).tiny)
    slack = solve_on_free_sets(gramian, products, free)
    violated = violations(gramian, products, slack, free, scale)
    positions = torch.arange(size, device=device)
    fewest = torch.full((num_rows,), size + 1, device=device)
    chances = torch.full((num_rows,), _FULL_EXCHANGES, device=device)
    for _ in range(max_iter):
        count = violated.sum(1)
        improved = count < fewest
        fewest = torch.minimum(fewest, count)
        chances = torch.where(improved, _FULL_EXCHANGES, chances - 1)
        largest = torch.where(violated, positions, -1).amax(1, keepdim=True)
        single = positions == largest
        free = free ^ torch.where((improved | (chances >= 0))[:, None], violated, single)
        rows = (count > 0).nonzero().squeeze(1)  # the rows whose free set just changed
        if len(rows) == 0:
            break
        rows_free = free[rows]
        step = solve_on_free_sets(gramian, products[rows], rows_free)
        slack[rows] = step
        violated[rows] = violations(gramian, products[rows], step, rows_free, scale[rows])
    return slack, free, violated.any(1)


def violations(gramian: Tensor, products: Tensor, slack: Tensor, free: Tensor, scale: Tensor) -> Tensor:
    """Where ``w_F < 0`` or ``y = G u + G w < 0`` off F, beyond a tolerance relative to the largest of
    ``scale`` (the targets' size) and ``|w|``, the size of the rounding errors in both."""
    tolerance = _TOLERANCE * torch.maximum(scale, slack.abs().amax(1, keepdim=True))
    return torch.where(free, slack, products + slack @ gramian) < -tolerance


def solve_on_free_sets(gramian: Tensor, products: Tensor, free: Tensor) -> Tensor:
    """For each row b: ``w`` with ``G_FF w_F = −products_F`` on ``F = free[b]`` and ``w = 0`` off F.

    The systems are gathered into one ``[B, width, width]`` batch (``width`` the largest free set) and
    solved by Cholesky; the rows where it fails (numerically singular systems) get the minimum-norm
    solution from the pseudo-inverse. Each padding slot of a row indexes its own extra coordinate of
    ``diag(G, I)``, so it becomes an identity row with a zero right-hand side.
    """
    width = int(free.sum(1).max())
    if width == 0:
        return torch.zeros_like(products)
    num_rows, size = free.shape
    extended = torch.block_diag(gramian, torch.eye(width, dtype=gramian.dtype, device=gramian.device))
    order = torch.argsort((~free).to(torch.uint8), dim=1, stable=True)[:, :width]  # free indices first
    inside = free.gather(1, order)
    padding = torch.arange(size, size + width, dtype=torch.int32, device=free.device)
    index = torch.where(inside, order.int(), padding)
    flat = (index * (size + width))[:, :, None] + index[:, None, :]  # int32: cheaper than int64 here
    system = extended.view(-1).index_select(0, flat.view(-1)).view(num_rows, width, width)
    rhs = torch.where(inside, -products.gather(1, order), 0.0)
    factor, info = torch.linalg.cholesky_ex(system)
    solution = torch.cholesky_solve(rhs[:, :, None], factor)[:, :, 0]
    failed = info.nonzero().squeeze(1)
    if len(failed):
        solution[failed] = (torch.linalg.pinv(system[failed], hermitian=True) @ rhs[failed, :, None])[:, :, 0]
    return torch.zeros_like(products).scatter_(1, order, torch.where(inside, solution, 0.0))
