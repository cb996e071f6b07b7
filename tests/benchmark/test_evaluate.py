"""Evaluation on hand-made frames: model selection on val, directions, aggregation over seeds, ranks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from benchmark.evaluate import (
    Claim,
    ReportSettings,
    TaskInfo,
    aggregate,
    delta_m,
    evaluate,
    evaluated_values,
    front_counts,
    metric_task,
    ranks,
    status_counts,
    trajectories,
)
from benchmark.registry import TASKS
from benchmark.task import Metric, Task

ACC_LOSS = TaskInfo((Metric("acc", True), Metric("loss", False)), ("val", "test"), "acc")


@TASKS.register("_fake_evaluate_task")
class FakeTask(Task):
    eval_splits = ("val", "test")
    selection_metric = "loss"

    def __init__(self, task_names: tuple[str, ...] = ("a", "b"), width: int = 1) -> None:
        super().__init__(task_names)

    def metrics(self) -> list[Metric]:
        return [Metric("loss", False), Metric("acc", True)]


def metric_rows(
    run_id: int,
    values: dict[str, dict[str, list[float]]],
    steps: list[int] | None = None,
    method: str = "m",
    seed: int = 0,
    status: str = "ok",
) -> pd.DataFrame:
    """Rows of one run: ``values[split][name]`` is the value at each of ``steps`` (default 0, 10, ...)."""
    rows = []
    for split, named in values.items():
        for name, series in named.items():
            for step, value in zip(steps or range(0, 10 * len(series), 10), series, strict=True):
                rows.append((run_id, step, split, name, value, "task", method, seed, status))
    columns = ["run_id", "step", "split", "name", "value", "task_label", "method_label", "seed", "status"]
    return pd.DataFrame(rows, columns=columns)


def value_of(values: pd.DataFrame, run_id: int, name: str) -> float:
    return float(values.query("run_id == @run_id and name == @name")["value"].item())


def test_selection_picks_the_best_val_step_and_reads_test_there() -> None:
    rows = metric_rows(
        1,
        {
            "val": {"acc": [0.5, 0.9, 0.7], "loss": [3.0, 2.0, 1.0]},
            "test": {"acc": [0.1, 0.2, 0.3], "loss": [30.0, 20.0, 10.0]},
        },
    )
    values = evaluated_values(rows, {1: ACC_LOSS})
    assert set(values["step"]) == {10}
    assert set(values["split"]) == {"test"}
    assert value_of(values, 1, "acc") == 0.2
    assert value_of(values, 1, "loss") == 20.0
    assert list(values["higher_is_better"]) == [True, False]


def test_a_lower_is_better_selection_metric_is_minimised() -> None:
    rows = metric_rows(1, {"val": {"loss": [3.0, 1.0, 2.0]}, "test": {"loss": [30.0, 10.0, 20.0]}})
    info = TaskInfo((Metric("loss", False),), ("val", "test"), "loss")
    assert value_of(evaluated_values(rows, {1: info}), 1, "loss") == 10.0


def test_without_a_selection_metric_the_higher_is_better_metrics_are_averaged() -> None:
    rows = metric_rows(
        1,
        {
            "val": {"acc": [0.9, 0.6, 0.5], "f1": [0.1, 0.6, 0.6], "loss": [0.0, 9.0, 9.0]},
            "test": {"acc": [1.0, 2.0, 3.0], "f1": [1.0, 2.0, 3.0], "loss": [1.0, 2.0, 3.0]},
        },
    )
    info = TaskInfo((Metric("acc", True), Metric("f1", True), Metric("loss", False)), ("val", "test"))
    assert value_of(evaluated_values(rows, {1: info}), 1, "acc") == 2.0


def test_ties_pick_the_earliest_step() -> None:
    rows = metric_rows(1, {"val": {"acc": [0.1, 0.8, 0.8]}, "test": {"acc": [1.0, 2.0, 3.0]}})
    assert value_of(evaluated_values(rows, {1: ACC_LOSS}), 1, "acc") == 2.0


def test_without_a_val_split_the_last_step_of_the_first_split_is_read() -> None:
    rows = metric_rows(1, {"train": {"loss": [3.0, 1.0, 2.0]}, "other": {"loss": [0.0, 0.0, 0.0, 0.0]}})
    info = TaskInfo((Metric("loss", False),), ("train", "other"))
    values = evaluated_values(rows, {1: info})
    assert (values["split"].item(), values["step"].item(), values["value"].item()) == ("train", 20, 2.0)


def test_undeclared_values_have_no_direction_and_come_after_the_metrics() -> None:
    rows = metric_rows(1, {"val": {"x1": [0.0], "acc": [0.5]}, "test": {"x1": [1.0], "acc": [0.4]}})
    values = evaluated_values(rows, {1: ACC_LOSS})
    assert list(values["name"]) == ["acc", "x1"]
    assert values["higher_is_better"].isna().tolist() == [False, True]


def seeds_frame() -> pd.DataFrame:
    """Method m: three ok seeds and one failed run; method n: one ok seed."""
    runs = [
        metric_rows(1, {"val": {"acc": [0.5]}, "test": {"acc": [0.2]}}, seed=0),
        metric_rows(2, {"val": {"acc": [0.5]}, "test": {"acc": [0.4]}}, seed=1),
        metric_rows(3, {"val": {"acc": [0.5]}, "test": {"acc": [0.9]}}, seed=2),
        metric_rows(4, {"val": {"acc": [0.5]}, "test": {"acc": [99.0]}}, seed=3, status="failed"),
        metric_rows(5, {"val": {"acc": [0.5]}, "test": {"acc": [0.7]}}, method="n"),
    ]
    return pd.concat(runs, ignore_index=True)


def test_mean_and_std_over_seeds_leave_out_runs_that_are_not_ok() -> None:
    values = evaluated_values(seeds_frame(), dict.fromkeys(range(1, 6), ACC_LOSS))
    summary = aggregate(values).set_index("method_label")
    assert summary.loc["m", "mean"] == pytest.approx(0.5)
    assert summary.loc["m", "std"] == pytest.approx(math.sqrt((0.3**2 + 0.1**2 + 0.4**2) / 2))
    assert summary.loc["m", "count"] == 3
    assert math.isnan(summary.loc["n", "std"])
    assert summary.loc["n", "count"] == 1


def test_status_counts_count_every_run() -> None:
    runs = seeds_frame().drop_duplicates("run_id")
    counts = status_counts(runs)
    assert counts.loc[("task", "m")].to_dict() == {"ok": 3, "diverged": 0, "failed": 1}
    assert counts.loc[("task", "n")].to_dict() == {"ok": 1, "diverged": 0, "failed": 0}


def test_ranks_respect_directions() -> None:
    summary = pd.DataFrame(
        {
            "task_label": "task",
            "method_label": ["a", "b", "c"] * 2 + ["a"],
            "name": ["acc"] * 3 + ["loss"] * 3 + ["x1"],
            "mean": [0.9, 0.8, 0.7, 2.0, 1.0, 3.0, -5.0],
            "higher_is_better": pd.array([True] * 3 + [False] * 3 + [None], dtype="boolean"),
        }
    )
    result = ranks(summary).set_index("method_label")["rank"].to_dict()
    assert result == {"a": 1.5, "b": 1.5, "c": 3.0}


def test_delta_m_against_equal_weighting_by_hand() -> None:
    summary = pd.DataFrame(
        {
            "task_label": ["t"] * 6 + ["toy"] * 2,
            "method_label": ["ew", "ew", "m", "m", "n", "n", "ew", "m"],
            "name": ["acc", "loss", "acc", "loss", "acc", "diag", "loss", "loss"],
            "mean": [0.5, 2.0, 0.6, 3.0, 0.7, 1.0, -20.0, -21.0],
            "higher_is_better": pd.array([True, False, True, False, True, pd.NA, False, False], "boolean"),
        }
    )
    result = delta_m(summary).set_index(["task_label", "method_label"])["delta_m"].to_dict()
    # m: accuracy +20 % (better: −20), loss +50 % (worse: +50) -> mean +15; n lacks the loss: left out
    assert result == pytest.approx({("t", "ew"): 0.0, ("t", "m"): 15.0})
    assert delta_m(summary, baseline="absent").empty  # and the toy's negative losses give no Δm%


def test_front_counts_and_trajectories() -> None:
    rows = pd.concat(
        [
            metric_rows(1, {"train": {"x1": [0.0, 1.0, 2.0], "x2": [5.0, 4.0, 3.0], "on_front": [0, 0, 1]}}),
            metric_rows(2, {"train": {"x1": [9.0, 8.0], "x2": [9.0, 8.0], "on_front": [0, 0]}}, seed=1),
        ],
        ignore_index=True,
    ).sample(frac=1.0, random_state=0)
    info = TaskInfo((Metric("on_front", True),), ("train",))
    fronts = front_counts(evaluated_values(rows, {1: info, 2: info}))
    assert fronts[["on_front", "runs"]].values.tolist() == [[1, 2]]
    paths = trajectories(rows, ("x1", "x2"), "train")["m"]
    by_start = sorted(paths, key=lambda p: p[0, 0])
    np.testing.assert_array_equal(by_start[0], [[0.0, 5.0], [1.0, 4.0], [2.0, 3.0]])
    np.testing.assert_array_equal(by_start[1], [[9.0, 9.0], [8.0, 8.0]])


def runs_frame(task: str, run_ids: list[int]) -> pd.DataFrame:
    spec = {"task": {"name": task, "params": {"width": 2}}}
    return pd.DataFrame(
        {
            "run_id": run_ids,
            "task": task,
            "task_label": "task",
            "method_label": "m",
            "seed": range(len(run_ids)),
            "status": "ok",
            "spec": [spec] * len(run_ids),
            "info": [None] * len(run_ids),  # as stored by a version-1 store: evaluation builds the task
        }
    )


def test_evaluate_reads_directions_and_selection_from_the_registered_task() -> None:
    metrics = metric_rows(
        1,
        {
            "val": {"acc": [0.9, 0.1], "loss": [5.0, 1.0]},
            "test": {"acc": [0.3, 0.4], "loss": [7.0, 8.0]},
        },
    )
    ev = evaluate(runs_frame("_fake_evaluate_task", [1]), metrics)
    assert ev.infos[1].selection_metric == "loss"
    assert ev.summary.set_index("name")["mean"].to_dict() == {"loss": 8.0, "acc": 0.4}
    assert ev.summary.set_index("name")["higher_is_better"].to_dict() == {"loss": False, "acc": True}


def test_stored_declarations_are_used_without_building_the_task() -> None:
    metrics = metric_rows(1, {"val": {"acc": [0.9, 0.1]}, "test": {"acc": [0.3, 0.4]}})
    runs = runs_frame("_no_such_task", [1]).assign(info=[ACC_LOSS])
    ev = evaluate(runs, metrics)
    assert ev.infos[1] is ACC_LOSS
    assert ev.summary.set_index("name")["mean"].to_dict() == {"acc": 0.3}


def test_an_unknown_task_is_evaluated_without_directions(caplog: pytest.LogCaptureFixture) -> None:
    metrics = metric_rows(1, {"val": {"acc": [0.9, 0.1]}, "test": {"acc": [0.3, 0.4]}})
    ev = evaluate(runs_frame("_no_such_task", [1]), metrics)
    assert "_no_such_task" in caplog.text
    assert ev.summary["higher_is_better"].isna().all()
    assert ev.ranks.empty


def test_empty_frames_give_empty_results() -> None:
    ev = evaluate(runs_frame("_fake_evaluate_task", [])[:0], metric_rows(1, {})[:0], infos={})
    assert ev.values.empty and ev.summary.empty and ev.ranks.empty and ev.counts.empty


# ---------------------------------------------------------------- tuning, tests, STL stitching, claims


def suite_frames(
    results: list[tuple[str, int, dict[str, dict[str, list[float]]]]],
    info: TaskInfo = ACC_LOSS,
    method_specs: dict[str, dict] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[int, TaskInfo]]:
    """Runs and metrics frames of ``(method label, seed, values)`` runs of one task label."""
    metrics, runs = [], []
    for run_id, (method, seed, values) in enumerate(results, start=1):
        metrics.append(metric_rows(run_id, values, method=method, seed=seed))
        method_spec = (method_specs or {}).get(method, {"name": method})
        spec = {"task": {"name": "t", "params": {}}, "method": method_spec}
        runs.append((run_id, "t", "task", method, seed, "ok", spec, info))
    columns = ["run_id", "task", "task_label", "method_label", "seed", "status", "spec", "info"]
    frame = pd.DataFrame(runs, columns=columns)
    return frame, pd.concat(metrics, ignore_index=True), {r[0]: info for r in runs}


def acc_run(method: str, seed: int, val: float, test: float) -> tuple[str, int, dict]:
    return method, seed, {"val": {"acc": [val]}, "test": {"acc": [test], "loss": [1.0]}}


def test_tuning_selects_on_validation_not_on_test() -> None:
    # lr=0.1 is best on validation (0.8 > 0.6) but worse on test (0.5 < 0.9): it must be kept.
    results = [acc_run("g[lr=0.1]", s, 0.8, 0.5 + s / 100) for s in range(2)]
    results += [acc_run("g[lr=0.01]", s, 0.6, 0.9 + s / 100) for s in range(2)]
    results += [acc_run("ew", s, 0.5, 0.7) for s in range(2)]
    runs, metrics, infos = suite_frames(results)
    ev = evaluate(runs, metrics, infos)
    acc = ev.summary[ev.summary["name"] == "acc"].set_index("method_label")["mean"]
    assert acc.to_dict() == pytest.approx({"g": 0.505, "ew": 0.7})
    tuning = ev.tuning.set_index(["method_label", "config"])
    assert tuning.loc[("g", "lr=0.1"), "selected"] and not tuning.loc[("g", "lr=0.01"), "selected"]
    assert tuning.loc[("g", "lr=0.1"), "val_score"] == pytest.approx(0.8)
    assert tuning["budget"].to_dict() == {("g", "lr=0.1"): 2, ("g", "lr=0.01"): 2, ("ew", ""): 1}
    assert set(ev.runs["method_label"]) == {"g", "ew"} and len(ev.runs) == 4
    assert len(ev.all_runs) == 6


def test_significance_is_paired_on_shared_seeds_and_holm_adjusted() -> None:
    tests = {"a": [0.9, 0.91, 0.93], "b": [0.52, 0.61, 0.5], "ew": [0.5, 0.6, 0.55]}
    results = [acc_run(m, s, 0.5, v) for m, vs in tests.items() for s, v in enumerate(vs)]
    results.append(acc_run("c", 7, 0.5, 0.7))  # a seed of its own: Welch, one run: no p-value
    runs, metrics, infos = suite_frames(results)
    ev = evaluate(runs, metrics, infos)
    sig = ev.significance[ev.significance["name"] == "acc"].set_index("method_label")
    assert sig.loc["a", "test"] == "paired t" and sig.loc["c", "test"] == "Welch t"
    p_a = sps.ttest_rel([0.9, 0.91, 0.93], [0.5, 0.6, 0.55]).pvalue
    p_b = sps.ttest_rel([0.52, 0.61, 0.5], [0.5, 0.6, 0.55]).pvalue
    assert sig.loc["a", "p"] == pytest.approx(p_a) and sig.loc["b", "p"] == pytest.approx(p_b)
    assert sig.loc["a", "p_holm"] == pytest.approx(min(1.0, 2 * min(p_a, p_b)))
    assert sig.loc["b", "p_holm"] == pytest.approx(min(1.0, max(2 * min(p_a, p_b), p_b)))
    assert math.isnan(sig.loc["c", "p"])
    assert sig.loc["a", "effect"] == pytest.approx(2.74 / 3 - 0.55)
    near = ev.near_best[ev.near_best["name"] == "acc"].set_index("method_label")
    assert set(near["reference"]) == {"a"}
    assert near["near"].to_dict() == {"b": False, "ew": False, "c": False}  # c: one run, untested
    half = ev.summary.set_index(["method_label", "name"]).loc[("a", "acc"), "half_width"]
    assert half == pytest.approx(sps.t.ppf(0.975, 2) * np.std([0.9, 0.91, 0.93], ddof=1) / math.sqrt(3))


TWO_TASKS = TaskInfo(
    (Metric("acc/left", True), Metric("acc/right", True), Metric("accuracy", True)),
    ("val", "test"), "accuracy", task_names=("left", "right"),
)


def two_task_run(method: str, seed: int, val: tuple[list, list], test: tuple[list, list]) -> tuple:
    values = {
        split: {"acc/left": left, "acc/right": right, "accuracy": list((np.add(left, right)) / 2)}
        for split, (left, right) in (("val", val), ("test", test))
    }
    return method, seed, values


def test_stl_references_are_stitched_per_task_and_selected_on_their_own_metric() -> None:
    stl = {f"stl(task={k})": {"name": "stl", "params": {"task": k}} for k in (0, 1)}
    results = [
        # stl(task=0): left is best on val at step 10 (0.9), where test left is 0.8; the mean
        # accuracy would pick step 0. Its right accuracy must not be used.
        two_task_run("stl(task=0)", 0, ([0.5, 0.9], [0.9, 0.0]), ([0.1, 0.8], [0.9, 0.1])),
        two_task_run("stl(task=1)", 0, ([0.0, 0.1], [0.6, 0.7]), ([0.0, 0.1], [0.4, 0.5])),
        two_task_run("ew", 0, ([0.5], [0.5]), ([0.4], [0.6])),
    ]
    runs, metrics, infos = suite_frames(results, TWO_TASKS, stl)
    ev = evaluate(runs, metrics, infos)
    # references: left 0.8 (stl 0), right 0.5 (stl 1); "accuracy" belongs to no task: left out
    d = ev.delta_m.set_index("method_label")
    changes = [-(0.4 - 0.8) / 0.8, -(0.6 - 0.5) / 0.5]
    assert d.loc["ew", "delta_m"] == pytest.approx(100 * np.mean(changes))
    assert d.loc["ew", "delta_p"] == pytest.approx(100 * np.mean(changes))
    assert d.loc["ew", "reference"] == "stl"


def test_without_stl_runs_the_baseline_is_the_reference_and_delta_p_groups_by_task() -> None:
    results = [
        two_task_run("ew", 0, ([0.5], [0.5]), ([0.5], [0.5])),
        two_task_run("m", 0, ([0.5], [0.5]), ([0.6], [0.5])),
    ]
    runs, metrics, infos = suite_frames(results, TWO_TASKS)
    d = evaluate(runs, metrics, infos).delta_m.set_index("method_label")
    # m: left +20 % -> -20; right 0; accuracy +10 % -> -10. Δm = -10; Δp = tasks left, right, accuracy
    assert d.loc["m", "delta_m"] == pytest.approx(-10.0)
    assert d.loc["m", "delta_p"] == pytest.approx(-10.0)
    assert d.loc["m", "reference"] == "ew"
    assert metric_task("acc/left", TWO_TASKS) == 0 and metric_task("accuracy", TWO_TASKS) is None


@pytest.mark.parametrize(
    ("better", "expected"),
    [
        ([0.9, 0.92, 0.91, 0.93], "supported"),
        ([0.3, 0.32, 0.31, 0.33], "not supported"),
        ([0.52, 0.49, 0.6, 0.45], "inconclusive"),
    ],
)
def test_claim_verdicts_on_data_whose_answer_is_known(better: list[float], expected: str) -> None:
    others = {"ew": [0.5, 0.51, 0.52, 0.49], "r": [0.55, 0.56, 0.53, 0.54]}
    results = [acc_run("g", s, 0.5, v) for s, v in enumerate(better)]
    results += [acc_run(m, s, 0.5, v) for m, vs in others.items() for s, v in enumerate(vs)]
    runs, metrics, infos = suite_frames(results)
    claims = (Claim("g", "all", "acc"), Claim("g", ("r",), "acc", "task"), Claim("g", ("x",), "acc"))
    table = evaluate(runs, metrics, infos, ReportSettings(claims=claims)).claims
    assert set(table.loc[table["claim"] == 0, "reference"]) == {"ew", "r"}
    assert set(table.loc[table["claim"] < 2, "verdict"]) == {expected}
    assert table.loc[table["claim"] == 2, "verdict"].item() == "inconclusive"  # no runs of x
    row = table[(table["claim"] == 1)].iloc[0]
    assert row["effect"] == pytest.approx(np.mean(better) - 0.545)
    assert row["low"] < row["effect"] < row["high"]
