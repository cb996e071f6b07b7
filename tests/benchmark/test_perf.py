"""The aggregation-cost benchmark: what it times and how it tables it (no timing is asserted)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import tests.benchmark.noisy_task  # noqa: F401  (registers the "_noisy" task)
from benchmark.errors import UserError
from benchmark.perf import Cost, aggregation_costs, cost_table, floor
from benchmark.step_perf import (
    BASELINE,
    TORCHJD,
    StepCase,
    SyntheticTask,
    build_step,
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
        assert [out.shape for out in model(inputs[:2])] == [torch.Size([2])] * 3  # one logit per row
        assert task.linear_heads
        model.batch_heads()  # what batched_heads does: the same outputs from one module
        assert [out.shape for out in model(inputs[:2])] == [torch.Size([2])] * 3


def test_cases_put_the_baseline_first_and_loss_weightings_at_one_level() -> None:
    cases = step_cases(["graddrop", "uw", "ew"], [2, 10], ["mlp"], torchjd=True)
    assert [(c.method, c.level, c.num_tasks) for c in cases[:5]] == [
        ("ew", "param", 2), ("graddrop", "param", 2), ("graddrop", "feature", 2), ("uw", "param", 2),
        (TORCHJD, "param", 2),
    ]
    assert len(cases) == 10 and cases[5].method == BASELINE and cases[5].num_tasks == 10
    assert all(c.method != TORCHJD for c in step_cases(["ew"], [2], ["cnn"], torchjd=False))


def test_cases_of_the_feature_level_alone_leave_out_torchjds_param_step() -> None:
    cases = step_cases(["graddrop", "uw"], [2], ["mlp"], levels=["feature"], torchjd=True)
    expected = [("ew", "param"), ("graddrop", "feature"), ("uw", "feature")]
    assert [(c.method, c.level) for c in cases] == expected


def test_ratios_are_against_the_baseline_of_the_same_model_and_round() -> None:
    base2, base10 = StepCase("ew", "param", "mlp", 2), StepCase("ew", "param", "mlp", 10)
    slow = StepCase("mgda", "feature", "mlp", 10)
    results = with_ratios({base2: [1.0, 2.0], base10: [4.0, 8.0], slow: [6.0, 20.0]})
    assert [r.ratios for r in results] == [[1.0, 1.0], [1.0, 1.0], [1.5, 2.5]]
    assert results[2].ratio == 2.0
    table = step_table(results)
    assert "| mlp | 10 | – | mgda | feature | 13.0 | 2.00 | 1.50–2.50 | 2.00 | – |" in table


FAST = (("batched_heads", True), ("optimizer_impl", "fused"))


def test_each_variant_adds_every_case_of_each_model_after_its_defaults() -> None:
    cases = step_cases(["mgda"], [2, 10], ["mlp"], torchjd=True, variants=[FAST, (), FAST])
    assert [(c.num_tasks, c.settings, c.method, c.level) for c in cases[:8]] == [
        (2, (), "ew", "param"), (2, (), "mgda", "param"), (2, (), "mgda", "feature"),
        (2, (), TORCHJD, "param"), (2, FAST, "ew", "param"), (2, FAST, "mgda", "param"),
        (2, FAST, "mgda", "feature"), (2, FAST, TORCHJD, "param"),
    ]  # the defaults once, each variant once
    assert len(cases) == 16 and cases[8] == StepCase("ew", "param", "mlp", 10)


def test_variant_ratios_are_to_the_ew_of_their_settings_and_to_the_default_ew() -> None:
    base, fast_base = StepCase("ew", "param", "mlp", 2), StepCase("ew", "param", "mlp", 2, settings=FAST)
    mgda, fast_mgda = StepCase("mgda", "param", "mlp", 2), StepCase("mgda", "param", "mlp", 2, settings=FAST)
    other = StepCase("ew", "param", "mlp", 10, settings=FAST)  # another model: its own baselines
    other_base = StepCase("ew", "param", "mlp", 10)
    times = {
        base: [10.0, 20.0], mgda: [30.0, 40.0], fast_base: [5.0, 16.0], fast_mgda: [10.0, 24.0],
        other_base: [100.0, 100.0], other: [50.0, 25.0],
    }
    results = {r.case: r for r in with_ratios(times)}
    assert results[mgda].ratios == [3.0, 2.0] and results[mgda].ratios_to_defaults == [3.0, 2.0]
    assert results[fast_base].ratios == [1.0, 1.0] and results[fast_base].ratios_to_defaults == [0.5, 0.8]
    assert results[fast_mgda].ratios == [2.0, 1.5] and results[fast_mgda].ratios_to_defaults == [1.0, 1.2]
    assert results[other].ratios == [1.0, 1.0] and results[other].ratios_to_defaults == [0.5, 0.25]
    table = step_table(list(results.values()))
    assert "| batched_heads=true, optimizer_impl=fused | ew | – | 10.5 | 1.00 | 1.00–1.00 | 0.65 |" in table
    rows = json.loads(step_json(list(results.values())))
    row = next(r for r in rows if r["method"] == "mgda" and r["settings"])
    assert row["settings"] == {"batched_heads": True, "optimizer_impl": "fused"}
    assert row["ratios_to_defaults"] == [1.0, 1.2] and row["ratio_to_defaults"] == 1.1


def test_settings_survive_the_json_round_trip_of_the_memory_subprocess() -> None:
    case = StepCase("mgda", "feature", "cnn", 3, settings=FAST[::-1])
    assert case.settings == FAST  # kept sorted
    back = StepCase(**json.loads(json.dumps(asdict(case))))  # as peak_memory_mib sends it
    assert back == case and hash(back) == hash(case) and back.settings == FAST


def test_settings_the_task_refuses_fail_naming_the_setting() -> None:
    with pytest.raises(UserError, match=r"_noisy\.train\.batched_heads: .*does not declare linear_heads"):
        build_step(StepCase("ew", "param", task="_noisy", settings=(("batched_heads", True),)))


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("bogus=1", "--variant bogus=1: bogus: unknown key"),
        ("lr=0.1,level=feature", "--variant lr=0.1,level=feature: level: perf --step sets"),
        ("jacobian=loop", "--variant jacobian=loop: jacobian: perf --step sets"),
        ("device=cpu", "--variant device=cpu: device: perf --step sets"),
        ("batched_heads", "--variant batched_heads: expected KEY=VALUE, got 'batched_heads'"),
        ("optimizer_impl=slow", "--variant optimizer_impl=slow: optimizer_impl: got 'slow'; expected one of"),
        ("batched_heads=yes please", "batched_heads: expected bool"),
        ("lr=1,lr=2", "--variant lr=1,lr=2: lr: given twice"),
    ],
)
def test_cli_refuses_a_bad_variant_naming_it(
    variant: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    argv = ["perf", "--step", "--methods", "ew", "--trunks", "mlp", "--tasks-counts", "2"]
    argv += ["--variant", "lr=0.1", "--variant", variant]  # one good variant does not hide a bad one
    assert main(argv) == 2
    assert message in caplog.text


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
    assert "| _noisy | 2 | – | ew | – |" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_times_a_variant_beside_the_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "step.json"
    argv = ["perf", "--step", "--methods", "ew", "mgda", "--trunks", "mlp", "--tasks-counts", "2"]
    argv += ["--rounds", "1", "--repeats", "1", "--no-memory", "--json", str(out)]
    assert main([*argv, "--variant", "batched_heads=true,optimizer_impl=fused"]) == 0
    rows = json.loads(out.read_text())
    fast = {"batched_heads": True, "optimizer_impl": "fused"}
    assert [(r["settings"], r["method"], r["level"]) for r in rows if r["method"] != TORCHJD] == [
        ({}, "ew", "param"), ({}, "mgda", "param"), ({}, "mgda", "feature"),
        (fast, "ew", "param"), (fast, "mgda", "param"), (fast, "mgda", "feature"),
    ]
    base = {bool(r["settings"]): r["ms"][0] for r in rows if r["method"] == BASELINE}
    for r in rows:
        assert r["ratios"] == [r["ms"][0] / base[bool(r["settings"])]]
        assert r["ratios_to_defaults"] == [r["ms"][0] / base[False]]
    assert "| mlp | 2 | batched_heads=true, optimizer_impl=fused | ew | – |" in capsys.readouterr().out


@pytest.mark.slow
def test_peak_memory_of_the_param_level_holds_the_jacobian() -> None:
    """At T = 10 the MLP's Jacobian alone is 10 × 787,456 float32 (30 MiB), allocated at the first step."""
    assert peak_memory_mib(StepCase("mgda", "param", "mlp", 10), steps=1) >= 30.0
