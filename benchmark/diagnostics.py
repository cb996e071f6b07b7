"""Gradient-conflict diagnostics of one step's per-task gradients ``[T, *shape]``.

Computed from the gradients a method combines (the Jacobian at the param level, the gradients at the
shared representation at the feature level), every ``diagnostics_every`` steps (0: never, no cost):

- ``cos_i_j``: the cosine of every pair i < j, and ``cos_mean`` their mean; a zero gradient has cosine
  0 with every other one;
- ``conflict_share``: the share of pairs with a negative cosine (Yu et al. 2020, "Gradient Surgery
  for Multi-Task Learning", NeurIPS, Def. 1: conflicting gradients);
- ``gms_mean``: the gradient magnitude similarity ``2‖gᵢ‖‖gⱼ‖ / (‖gᵢ‖² + ‖gⱼ‖²)`` (Yu et al. 2020,
  Def. 2) averaged over pairs; 1 for a pair of zero gradients;
- ``norm_ratio``: the largest gradient norm over the smallest (inf when one is zero);
- ``gram_cond``: the condition number of the Gramian ``G Gᵀ`` (ratio of its extreme singular values,
  ``torch.linalg.cond``; inf or very large when the gradients are linearly dependent);
- ``purity_k``, k = 0..9: the share of scalars whose sign purity 𝒫 = ½(1 + Σᵢgᵢ / (Σᵢ|gᵢ| + ε)) lies in
  [k/10, (k+1)/10) (the last bin includes 1) — GradDrop's 𝒫 (Chen et al. 2020, NeurIPS, Eq. 1) on the
  gradients as given, i.e. its ``input: none``. With ``input: sign`` GradDrop mirrors 𝒫 around ½ where
  the activation is negative, which leaves the histogram of |𝒫 − ½| unchanged.

A task count below 2 has no pairs: only the purity histogram is returned.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

PURITY_BINS = 10
PURITY_EPS = 1e-7
"""GradDrop's ε in 𝒫 (its default ``eps``)."""
SUMMARY = ("cos_mean", "conflict_share", "gms_mean", "norm_ratio", "gram_cond")


def gradient_diagnostics(grads: Tensor) -> dict[str, float]:
    """Every diagnostic of ``grads`` ``[T, *shape]`` (see the module docstring), as plain floats."""
    if grads.dim() < 1 or grads.shape[0] < 1:
        shape = tuple(grads.shape)
        raise ValueError(f"expected per-task gradients [T, *shape] with T >= 1, got shape {shape}")
    flat = grads.detach().reshape(grads.shape[0], -1).double()
    values = purity_histogram(flat)
    if flat.shape[0] >= 2:
        values.update(pair_statistics(flat))
    return values


def pair_statistics(flat: Tensor) -> dict[str, float]:
    """Cosines, conflict share, magnitude similarity, norm ratio and Gramian condition of ``flat`` [T, N]."""
    gram = flat @ flat.T
    norms = gram.diagonal().clamp_min(0.0).sqrt()
    i, j = torch.triu_indices(len(norms), len(norms), offset=1)
    products = norms[i] * norms[j]
    cosines = torch.where(products > 0, gram[i, j] / products.clamp_min(1e-300), 0.0).clamp(-1.0, 1.0)
    squares = norms[i] ** 2 + norms[j] ** 2
    gms = torch.where(squares > 0, 2 * products / squares.clamp_min(1e-300), 1.0)
    smallest = float(norms.min())
    values = {
        "cos_mean": float(cosines.mean()),
        "conflict_share": float((cosines < 0).double().mean()),
        "gms_mean": float(gms.mean()),
        "norm_ratio": float(norms.max()) / smallest if smallest > 0 else math.inf,
        "gram_cond": float(torch.linalg.cond(gram)),
    }
    pairs = zip(i.tolist(), j.tolist(), cosines.tolist(), strict=True)
    values.update({f"cos_{a}_{b}": c for a, b, c in pairs})
    return values


def purity_histogram(flat: Tensor) -> dict[str, float]:
    """``purity_k``: the share of the N scalars of ``flat`` [T, N] whose sign purity is in bin k."""
    purity = 0.5 * (1.0 + flat.sum(0) / (flat.abs().sum(0) + PURITY_EPS))
    counts = torch.histc(purity, bins=PURITY_BINS, min=0.0, max=1.0)
    shares = (counts / max(purity.numel(), 1)).tolist()
    return {f"purity_{k}": share for k, share in enumerate(shares)}


def pair_of(name: str) -> tuple[int, int] | None:
    """``(i, j)`` of a ``cos_i_j`` name, else ``None``."""
    parts = name.split("_")
    if len(parts) == 3 and parts[0] == "cos" and parts[1].isdigit() and parts[2].isdigit():
        return int(parts[1]), int(parts[2])
    return None
