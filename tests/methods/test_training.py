"""Every registered method trains a few steps on toy2d and digits, at both levels, without error or NaN."""

from __future__ import annotations

import math

import pytest

from benchmark.config import parse_suite
from benchmark.registry import METHODS
from benchmark.trainer import run

TASKS = {
    "toy2d": {"name": "toy2d", "params": {"start": 0}},
    "digits": {"name": "digits", "params": {"hidden": 16}, "train": {"batch_size": 64}},
}


@pytest.mark.parametrize("level", ["param", "feature"])
@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("name", METHODS.names())
def test_trains_without_error_or_nan(name: str, task: str, level: str) -> None:
    raw = {
        "train": {"steps": 4, "eval_every": 2, "level": level, "jacobian": "loop"},
        "tasks": [TASKS[task]],
        "methods": [name],
    }
    result = run(parse_suite(raw).runs[0])
    assert result.status == "ok", result.error
    assert result.metrics and all(math.isfinite(row.value) for row in result.metrics)
