"""A floor for the methods that divide by a loss or take its logarithm."""

from __future__ import annotations

import torch
from torch import Tensor

LOSS_FLOOR = 1e-8  # losses below this count as this, so 1 / L and log L stay finite


def floored(losses: Tensor) -> Tensor:
    """``losses`` clamped to :data:`LOSS_FLOOR` (or the dtype's smallest normal number, if larger)."""
    return losses.clamp_min(max(LOSS_FLOOR, torch.finfo(losses.dtype).tiny))
