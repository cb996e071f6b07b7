"""Checks of task hyperparameters as they come from YAML; each error names the task, the key and the value.

(Methods have their own, :mod:`methods._checks`, whose messages name the method the same way.)
"""

from __future__ import annotations

import math
from typing import Any


def check_int(task: str, name: str, value: Any, minimum: int) -> int:
    """``value``, an integer (not a bool) of at least ``minimum``, else a ``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{task}: {name}={value!r} must be an integer >= {minimum}")
    return value


def check_number(
    task: str, name: str, value: Any, low: float, high: float = math.inf, high_open: bool = False
) -> float:
    """``value`` as a float: a finite number (not a bool) in ``[low, high]`` (``[low, high)`` with
    ``high_open``), else a ``ValueError`` naming it."""
    valid = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not (valid and low <= value and (value < high if high_open else value <= high)):
        interval = f"[{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{task}: {name}={value!r} must be a number in {interval}")
    return float(value)


def check_fraction(task: str, name: str, value: Any) -> float:
    """``value``, a number in [0, 1)."""
    return check_number(task, name, value, 0, 1, high_open=True)
