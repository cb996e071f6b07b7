"""The aggregation-cost benchmark: what it times and how it tables it (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tests.benchmark.noisy_task  # noqa: F401  (registers the "_noisy" task)
from benchmark.perf import Cost, aggregation_costs, cost_table, floor
from benchmark.step_perf import (
    BASELINE,
    TORCHJD,
    StepCase,
    SyntheticTask,
    peak_memory_mib,
    step_benchmark,
    step_cases,
    step_json,
    step_table,
    time_interleaved,
    with_ratios,
)
from run_all import main


def test_floor_is_the_gramian_weighted_sum_of_rows() -> None:
    matrix = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(floor(matrix), 5 * matrix[0] + 25 * matrix[1])


def test_every_method_and_size_is_timed_against_its_own_floor() -> None:
    costs = aggregation_costs(["ew", "pcgrad"], num_tasks=3, sizes=[20, 40], repeats=1)
    assert [(c.method, c.params) for c in costs] == [("ew", 20), ("pcgrad", 20), ("ew", 40), ("pcgrad", 40)]
    assert all(c.ms > 0 and c.floor_ms > 0 for c in costs)


def test_table_marks_methods_over_the_goal() -> None:
    costs = [Cost("fast", 100, 1.0, 2.0), Cost("slow", 100, 9.0, 2.0)]
    table = cost_table(costs, goal=2.0)
    assert "| (floor: J Jᵀ + w J) | 2.00 | 1 |" in table
    assert "| fast | 1.00 | 0.50 |" in table and "| slow | 9.00 | 4.50 ⚠ |" in table


# --- the step benchmark ---------------------------------------------------------------------------


def test_synthetic_trunks_are_those_of_design_section_7() -> None:
    for trunk, shared, batch in (("mlp", 787_456, 256), ("cnn", 65_552, 64)):
        task = SyntheticTask(trunk, num_tasks=3)
        model = task.build_model()
        assert sum(p.numel() for p in model.shared_parameters()) == shared
        inputs = next(task.train_batches(task.train_defaults["batch_size"], torch.Generator())).inputs
        assert inputs.shape[0] == batch
        assert [out.shape for out in model(inputs[:2])] == [torch.Size([2, 1])] * 3


def test_cases_put_the_baseline_first_and_loss_weightings_at_one_level() -> None:
    cases = step_cases(["graddrop", "uw", "ew"], [2, 10], ["mlp"], torchjd=True)
    assert [(c.method, c.level, c.num_tasks) for c in cases[:5]] == [
        ("ew", "param", 2), ("graddrop", "param", 2), ("graddrop", "feature", 2), ("uw", "param", 2),
        (TORCHJD, "param", 2),
    ]
    assert len(cases) == 10 and cases[5].method == BASELINE and cases[5].num_tasks == 10
    assert all(c.method != TORCHJD for c in step_cases(["ew"], [2], ["cnn"], torchjd=False))


def test_ratios_are_against_the_baseline_of_the_same_model_and_round() -> None:
    base2, base10 = StepCase("ew", "param", "mlp", 2), StepCase("ew", "param", "mlp", 10)
    slow = StepCase("mgda", "feature", "mlp", 10)
    results = with_ratios({base2: [1.0, 2.0], base10: [4.0, 8.0], slow: [6.0, 20.0]})
    assert [r.ratios for r in results] == [[1.0, 1.0], [1.0, 1.0], [1.5, 2.5]]
    assert results[2].ratio == 2.0
    table = step_table(results)
    assert "| mlp | 10 | mgda | feature | 13.0 | 2.00 | 1.50–2.50 | – |" in table


def test_interleaved_rounds_visit_every_case_once_per_repeat_in_turn() -> None:
    calls: list[str] = []
    steps = {StepCase(name, "param", "mlp", 2): (lambda n=name: calls.append(n)) for name in ("ew", "mgda")}
    times = time_interleaved(steps, rounds=3, repeats=2)
    assert calls == ["ew", "mgda"] + ["ew", "ew", "mgda", "mgda"] * 3  # warm-up, then round-robin
    assert all(len(ms) == 3 and min(ms) >= 0 for ms in times.values())


@pytest.mark.slow
def test_the_real_step_of_a_registered_task_is_timed_with_torchjd_beside_it() -> None:
    pytest.importorskip("torchjd")
    cases = step_cases(["ew", "mgda"], [], [], tasks=["_noisy"], torchjd=True)
    results = step_benchmark(cases, rounds=2, repeats=1, memory=False)
    assert [(r.case.method, r.case.level) for r in results] == [
        ("ew", "param"), ("mgda", "param"), ("mgda", "feature"), (TORCHJD, "param")
    ]
    base = results[0].ms
    for r in results:
        assert len(r.ms) == 2 and r.ratios == [t / b for t, b in zip(r.ms, base, strict=True)]
    rows = json.loads(step_json(results))
    assert rows[1]["method"] == "mgda" and rows[1]["task"] == "_noisy" and rows[1]["num_tasks"] == 2


@pytest.mark.slow
def test_cli_writes_the_table_and_the_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "step.json"
    argv = ["perf", "--step", "--methods", "ew", "--task", "_noisy", "--trunks", "mlp", "--tasks-counts", "2",
            "--rounds", "1", "--repeats", "1", "--no-memory", "--json", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())
    assert [(r["trunk"], r["task"], r["method"]) for r in rows][:1] == [("mlp", "", "ew")]
    assert ("", "_noisy", "ew") in {(r["trunk"], r["task"], r["method"]) for r in rows}
    assert "| _noisy | 2 | ew | – |" in capsys.readouterr().out


@pytest.mark.slow
def test_peak_memory_of_the_param_level_holds_the_jacobian() -> None:
    """At T = 10 the MLP's Jacobian alone is 10 × 787,456 float32 (30 MiB), allocated at the first step."""
    assert peak_memory_mib(StepCase("mgda", "param", "mlp", 10), steps=1) >= 30.0
