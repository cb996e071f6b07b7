"""Per-task hyperparameters from YAML: one number for every task, or one per task."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def task_vector(
    method: str, key: str, values: float | list[float] | None, num_tasks: int, default: float
) -> Tensor:
    """``values`` as a float64 ``[T]`` tensor: ``default`` everywhere for ``None``, a number for every
    task, or ``num_tasks`` numbers. ``ValueError`` naming ``method`` and ``key`` unless all are finite."""
    if values is None:
        values = default
    raw = [values] * num_tasks if isinstance(values, int | float) else values
    try:
        floats = [float(v) for v in raw]
    except (TypeError, ValueError):
        floats = []
    if isinstance(values, bool) or len(floats) != num_tasks or not all(map(math.isfinite, floats)):
        raise ValueError(f"{method}: {key} must be a finite number or {num_tasks} of them, got {values!r}")
    return torch.tensor(floats, dtype=torch.float64)
