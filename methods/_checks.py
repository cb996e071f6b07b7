"""Checks of hyperparameters as they come from YAML; each error names the method, the key and the value."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def _bounds(low: float, high: float, low_open: bool, high_open: bool) -> str:
    if math.isinf(high):
        return f"{'>' if low_open else '>='} {low:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def _within(value: float, low: float, high: float, low_open: bool, high_open: bool) -> bool:
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    return above and below


def check_number(
    method: str,
    key: str,
    value: Any,
    low: float = 0.0,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float: a finite number (not a bool) in the interval from ``low`` to ``high``."""
    valid = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not (valid and _within(value, low, high, low_open, high_open)):
        bounds = _bounds(low, high, low_open, high_open)
        raise ValueError(f"{method}: {key} must be a finite number {bounds}, got {value!r}")
    return float(value)


def check_integer(method: str, key: str, value: Any, low: int = 0, high: float = math.inf) -> int:
    """``value``: an integer (not a bool) in ``[low, high]``."""
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
        bounds = _bounds(low, high, low_open=False, high_open=False)
        raise ValueError(f"{method}: {key} must be an integer {bounds}, got {value!r}")
    return value


def check_choice(method: str, key: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value``, one of ``choices`` and of the same type (1.0 is not the choice 1, True not 1)."""
    if not any(type(value) is type(choice) and value == choice for choice in choices):
        raise ValueError(f"{method}: {key} must be one of {tuple(choices)}, got {value!r}")
    return value


def task_vector(
    method: str,
    key: str,
    values: float | list[float] | None,
    num_tasks: int,
    default: float,
    low: float = -math.inf,
    high: float = math.inf,
) -> Tensor:
    """``values`` as a float64 ``[T]`` tensor: ``default`` everywhere for ``None``, a number for every
    task, or ``num_tasks`` numbers, each finite and in ``[low, high]``."""
    if values is None:
        values = default
    raw = [values] * num_tasks if isinstance(values, int | float) else values
    try:
        floats = [float(v) for v in raw]
    except (TypeError, ValueError):
        floats = []
    valid = not isinstance(values, bool) and len(floats) == num_tasks
    if not (valid and all(math.isfinite(v) and low <= v <= high for v in floats)):
        where = "" if math.isinf(low) and math.isinf(high) else f" in [{low:g}, {high:g}]"
        raise ValueError(
            f"{method}: {key} must be a finite number{where} or {num_tasks} of them, got {values!r}"
        )
    return torch.tensor(floats, dtype=torch.float64)
