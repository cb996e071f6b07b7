"""Euclidean projection onto the probability simplex, shared by the methods that keep simplex weights."""

from __future__ import annotations

import torch
from torch import Tensor


def project_onto_simplex(values: Tensor) -> Tensor:
    """The point of ``{w : w ≥ 0, Σ w = 1}`` nearest to ``values`` along the last dim (Duchi et al. 2008,
    "Efficient Projections onto the l1-Ball for Learning in High Dimensions", Figure 1).

    Sort-based and branch-free: the result is ``max(values − θ, 0)`` where, with ``u`` the values
    sorted in decreasing order, ``θ = max_k (Σ_{i≤k} u_i − 1) / k`` (the largest of these ratios is
    the one at Duchi et al.'s ρ). The values are first shifted so that their largest is 0 (the
    projection is unchanged), which keeps huge values from swallowing the 1. Batched over leading dims;
    no host synchronisation.
    """
    values = values - values.amax(dim=-1, keepdim=True)
    ranked = values.sort(dim=-1, descending=True).values
    ranks = torch.arange(1, values.shape[-1] + 1, device=values.device, dtype=values.dtype)
    theta = ((ranked.cumsum(dim=-1) - 1) / ranks).amax(dim=-1, keepdim=True)
    return (values - theta).clamp_min(0)


def uniform(num_tasks: int, device: torch.device | str | None = None) -> Tensor:
    """The centre of the simplex, ``1/T``, in float64: the start of the methods' simplex weights."""
    return torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64, device=device)
