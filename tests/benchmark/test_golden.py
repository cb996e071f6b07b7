"""The shipped tasks and methods give bit-identical metrics to those recorded from the code of commit
8b1e6ec (before the step pipeline, batches with named tensors and side-effect-free extra forwards).

``golden_metrics.json`` holds, per case, every metric row of a short run (seed 1) as ``float.hex``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.specs import PluginSpec, RunSpec, TrainSpec
from benchmark.task import get_task
from benchmark.trainer import run

CASES = json.loads((Path(__file__).parent / "golden_metrics.json").read_text())


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{c['task']}-{c['method']}-{c['train'].get('level', 'default')}" for c in CASES]
)
def test_metrics_bit_identical_to_recorded(case: dict) -> None:
    defaults = dict(get_task(case["task"], **case["task_params"]).train_defaults)
    train = TrainSpec(**{**defaults, **case["train"]})
    task = PluginSpec(case["task"], case["task_params"])
    spec = RunSpec("golden", task, PluginSpec(case["method"]), 1, train)
    result = run(spec)
    assert result.status == "ok", result.error
    got = [[m.step, m.split, m.name, float(m.value).hex()] for m in result.metrics]
    assert got == case["metrics"]
