"""Shared mechanics of the methods that only need the T x T Gramian of the gradients."""

from __future__ import annotations

import torch
from torch import Tensor


def scale_free(gramian: Tensor) -> Tensor:
    """``gramian`` divided by its largest diagonal entry, so solvers see entries in [-1, 1].

    Methods built on the Gramian are invariant to this scaling; it keeps their arithmetic away from
    overflow and underflow. An all-zero Gramian stays zero.
    """
    largest = gramian.diagonal().max().clamp_min(torch.finfo(gramian.dtype).tiny)
    return gramian / largest
