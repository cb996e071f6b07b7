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


def is_number(value: Any) -> bool:
    """Whether ``value`` is a real number as YAML gives one: an int or a float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


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
    if not (is_number(value) and math.isfinite(value) and _within(value, low, high, low_open, high_open)):
        bounds = _bounds(low, high, low_open, high_open)
        raise ValueError(f"{method}: {key} must be a finite number {bounds}, got {value!r}")
    return float(value)


def check_integer(method: str, key: str, value: Any, low: int = 0, high: float = math.inf) -> int:
    """``value``: an integer (not a bool) in ``[low, high]``."""
    if not (is_number(value) and isinstance(value, int) and low <= value <= high):
        bounds = _bounds(low, high, low_open=False, high_open=False)
        raise ValueError(f"{method}: {key} must be an integer {bounds}, got {value!r}")
    return value


def check_choice(method: str, key: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value``, one of ``choices`` and of the same type (1.0 is not the choice 1, True not 1)."""
    if not any(type(value) is type(choice) and value == choice for choice in choices):
        raise ValueError(f"{method}: {key} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_flag(method: str, key: str, value: Any) -> bool:
    """``value``: ``True`` or ``False`` itself; ``"false"``, 0, 1 or ``None`` are not flags."""
    if not isinstance(value, bool):
        raise ValueError(f"{method}: {key} must be true or false, got {value!r}")
    return value


def task_vector(
    method: str,
    key: str,
    values: float | list[float] | None,
    num_tasks: int,
    default: float | None = None,
    low: float = -math.inf,
    high: float = math.inf,
) -> Tensor:
    """``values`` as a float64 ``[T]`` tensor: ``default`` everywhere for ``None`` (refused when there is
    no ``default``), a number for every task, or a list of ``num_tasks`` numbers, each finite and in
    ``[low, high]`` (bools and strings are not numbers)."""
    if values is None and default is not None:
        values = default
    raw = [values] * num_tasks if is_number(values) else values
    valid = isinstance(raw, list | tuple) and len(raw) == num_tasks
    if not (valid and all(is_number(v) and math.isfinite(v) and low <= v <= high for v in raw)):
        where = "" if math.isinf(low) and math.isinf(high) else f" in [{low:g}, {high:g}]"
        raise ValueError(
            f"{method}: {key} must be a finite number{where} or {num_tasks} of them, got {values!r}"
        )
    return torch.tensor([float(v) for v in raw], dtype=torch.float64)
