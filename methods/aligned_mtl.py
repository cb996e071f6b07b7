"""Aligned-MTL: align the principal components of the task gradients (Senushkin et al. 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.method import GramianMethod, StepContext
from benchmark.registry import METHODS
from methods._checks import task_vector
from methods._gramian import scale_free


def balance_transformation(gramian: Tensor) -> Tensor:
    """``B = sqrt(λ_min) V Λ^(−1/2) Vᵀ`` from the eigendecomposition ``G = V Λ Vᵀ`` (Algorithm 1).

    ``B J`` has the singular vectors of J and all its non-zero singular values equal to ``sqrt(λ_min)``:
    condition number 1. Eigenvalues up to ``λ_max T eps`` (eps of the Gramian's dtype, as in TorchJD)
    count as zero and drop out; λ_min is the smallest kept one. Computed in float64; an all-zero
    Gramian gives 0.
    """
    eps = torch.finfo(gramian.dtype).eps
    eigenvalues, vectors = torch.linalg.eigh(gramian.to(torch.float64))
    kept = eigenvalues > eigenvalues.max() * len(gramian) * eps
    smallest = torch.where(kept, eigenvalues, eigenvalues.max()).amin()
    ratios = smallest / eigenvalues.clamp_min(torch.finfo(torch.float64).tiny)
    scales = torch.where(kept, ratios.sqrt(), 0.0)
    return (vectors * scales) @ vectors.T


@METHODS.register("aligned_mtl")
class AlignedMTL(GramianMethod):
    """Aligned-MTL, Senushkin et al. 2023, "Independent Component Alignment for Multi-Task Learning"
    (CVPR, https://arxiv.org/abs/2305.19000), Algorithm 1: the gradients are replaced by ``Bᵀ J``, the
    matrix of the same principal directions with every singular value set to the smallest non-zero one
    (:func:`balance_transformation`, the ``"min"`` scale of the authors' code), and the update is
    ``Σᵢ pᵢ (Bᵀ J)ᵢ``, i.e. the weights are ``B p``. Aligned-MTL-UB, the paper's cheaper variant, is this
    method at the feature level (gradients w.r.t. the shared representation).

    Args:
        pref_vector: the task weights p; ``None`` (default) means ones, the sum of the aligned
            gradients, as in the authors' code (``grads.sum(-1)``).

    Departures: TorchJD's ``AlignedMTL`` uses ``1/T`` weights by default (its update is this one
    divided by T); the authors' eigenvalue cut uses float32's eps whatever the dtype.
    """

    description = "Align the gradients' principal components to equal magnitude (condition number 1)"
    citation = "Senushkin et al. 2023, CVPR"
    level = "param"
    deterministic = True
    permutation_invariant = True
    linear_under_scaling = True

    def __init__(self, num_tasks: int, pref_vector: list[float] | None = None) -> None:
        super().__init__(num_tasks)
        preferences = task_vector("aligned_mtl", "pref_vector", pref_vector, num_tasks, 1.0)
        self.register_buffer("preferences", preferences, persistent=False)

    def gramian_weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        balance = balance_transformation(scale_free(gramian))
        return (balance @ self.preferences.to(balance.device)).to(gramian.dtype)
