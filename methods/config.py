"""ConFIG: the conflict-free direction of equal cosine with every task gradient (Liu et al. 2025)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.method import GramianMethod, StepContext
from benchmark.registry import METHODS


def config_weights(gramian: Tensor) -> Tensor:
    """Weights ``w`` with ``Jᵀ w`` the ConFIG update, from ``G = J Jᵀ`` alone.

    With ``D = diag(‖gᵢ‖)`` and unit rows ``U = D⁻¹ J`` (Gramian ``Ĝ = D⁻¹ G D⁻¹``), the direction is
    ``x = U⁺ 1 = Jᵀ D⁻¹ c`` with ``c = Ĝ⁺ 1`` (a zero gradient gets a zero row). The update
    ``(Σᵢ gᵢ · x̂) x̂``, ``x̂ = x / ‖x‖``, is then ``w = D⁻¹ c (‖g‖ᵀ Ĝ c) / (cᵀ Ĝ c)``: every product is
    taken in the unit space, so gradients of very different sizes cannot overflow it. The pseudo-inverse
    cuts eigenvalues of ``Ĝ`` up to ``T eps`` of the largest, eps of the Gramian's dtype (the rounding of
    a float32 Gramian, e.g. of ``g`` and ``−g`` twice, would otherwise be inverted into a NaN update).
    """
    matrix = gramian.double()
    norms = matrix.diagonal().clamp_min(0).sqrt()
    inverse_norms = torch.where(norms > 0, 1 / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)
    unit_gramian = matrix * inverse_norms[:, None] * inverse_norms[None, :]
    unit_gramian.diagonal().copy_((norms > 0).to(matrix.dtype))  # exact ones for the unit rows
    cut = len(matrix) * torch.finfo(gramian.dtype).eps  # the input's rounding, not float64's
    unit_direction = torch.linalg.pinv(unit_gramian, rtol=cut, hermitian=True) @ torch.ones_like(norms)
    projected = unit_gramian @ unit_direction  # U x: each unit gradient's dot product with x
    squared_norm = (unit_direction @ projected).clamp_min(torch.finfo(norms.dtype).tiny)  # ‖x‖²
    weights = inverse_norms * unit_direction * (norms @ projected) / squared_norm
    return weights.to(gramian.dtype)


@METHODS.register("config")
class ConFIG(GramianMethod):
    """ConFIG, Liu et al. 2025, "ConFIG: Towards Conflict-free Training of Physics Informed Neural
    Networks" (ICLR, https://arxiv.org/abs/2408.11104), Eq. 2: the update has the direction
    ``x = U⁺ 1`` of equal cosine with every gradient (U the unit-normalised gradients, ``U⁺`` the
    pseudo-inverse) and the length ``Σᵢ gᵢ · x̂``, the sum of the gradients' projections on it. Computed
    from the T x T Gramian (:func:`config_weights`) instead of a pseudo-inverse of the ``[T, P]`` matrix.

    With linearly independent gradients every ``gᵢ · x̂ > 0``: the update conflicts with no task (the
    paper's claim). With dependent ones (T > P, or collinear gradients), ``U⁺ 1`` is only the
    least-squares direction and may conflict, so the method does not claim ``non_conflicting``.

    No hyperparameters (the paper's equal weights). Departures: the pseudo-inverse is taken on the unit
    Gramian, so singular values of U below ``sqrt(T eps)`` of the largest are cut, eps of the gradients'
    dtype (TorchJD and the authors cut those below ``P eps`` on U itself). Where ``1`` is orthogonal to
    the unit gradients' span (exactly opposite gradients) ``U⁺ 1 = 0`` and the update is 0 up to
    rounding.
    """

    description = "Direction of equal cosine with all task gradients, scaled by their summed projections"
    citation = "Liu et al. 2025, ICLR"
    level = "param"
    deterministic = True
    permutation_invariant = True
    linear_under_scaling = True

    def gramian_weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        return config_weights(gramian)
