"""The report, end to end on a temporary store filled with hand-made results of two fake tasks."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from benchmark.evaluate import Claim, Published, ReportSettings, evaluate
from benchmark.registry import TASKS
from benchmark.report import final_loss_ratios, write_report
from benchmark.specs import PluginSpec, RunSpec, TrainSpec
from benchmark.store import ResultsStore
from benchmark.task import Landscape, Metric, Task
from benchmark.trainer import MetricRow, RunResult


@TASKS.register("_fake_report_task")
class FakeTask(Task):
    eval_splits = ("val", "test")
    selection_metric = "acc"

    def __init__(self, task_names: tuple[str, ...] = ("a", "b")) -> None:
        super().__init__(task_names)

    def metrics(self) -> list[Metric]:
        return [Metric("acc", True), Metric("loss", False)]


@TASKS.register("_fake_report_toy")
class FakeToy(Task):
    """Two quadratics in the plane; the segment between their minima is the Pareto set."""

    eval_splits = ("train",)

    def __init__(self, start: tuple[float, float] = (0.0, 0.0)) -> None:
        super().__init__(("l1", "l2"))

    def metrics(self) -> list[Metric]:
        return [Metric("loss", False)]

    def landscape(self) -> Landscape:
        def losses(x: Tensor) -> Tensor:
            return torch.stack([((x - 1.0) ** 2).sum(1), ((x + 1.0) ** 2).sum(1)], dim=1)

        return Landscape((-2.0, 2.0, -2.0, 2.0), losses, torch.linspace(-1, 1, 20)[:, None].repeat(1, 2))


def spec(task: str, method: str, seed: int, params: dict | None = None, suite: str = "suite") -> RunSpec:
    return RunSpec(
        suite, PluginSpec(task, params or {}), PluginSpec(method.lower(), label=method), seed, TrainSpec()
    )


def classifier_run(method: str, seed: int, test_acc: float, test_loss: float) -> RunResult:
    """Validation accuracy peaks at step 10; test values there are ``test_acc``, ``test_loss``."""
    rows = []
    for step, val_acc in ((0, 0.1), (10, 0.9), (20, 0.5)):
        at_best = step == 10
        rows += [
            MetricRow(step, "val", "acc", val_acc),
            MetricRow(step, "test", "acc", test_acc if at_best else 0.0),
            MetricRow(step, "test", "loss", test_loss if at_best else 100.0),
        ]
    timings = {"step_ms_mean": 2.0 + seed, "train_s": 1.0}
    return RunResult(spec("_fake_report_task", method, seed), "ok", rows, timings)


def toy_run(method: str, start: tuple[float, float], end: tuple[float, float], on_front: bool) -> RunResult:
    rows = []
    for step, t in ((0, 0.0), (50, 0.5), (100, 1.0)):
        x = [s + t * (e - s) for s, e in zip(start, end, strict=True)]
        rows += [MetricRow(step, "train", "x1", x[0]), MetricRow(step, "train", "x2", x[1])]
        rows += [
            MetricRow(step, "train", "loss", 1.0 - t),
            MetricRow(step, "train", "on_front", float(on_front)),
        ]
    run_spec = spec("_fake_report_toy", method, 0, {"start": list(start)})
    return RunResult(run_spec, "ok", rows, {"step_ms_mean": 0.5, "train_s": 0.1})


@pytest.fixture
def store(tmp_path: Path) -> ResultsStore:
    store = ResultsStore(tmp_path / "results.db")
    results = [
        classifier_run("ew", 0, 0.85, 0.5),
        classifier_run("ew", 1, 0.90, 0.7),
        classifier_run("PCGrad", 0, 0.60, 0.2),
        classifier_run("PCGrad", 1, 0.70, 0.3),
        RunResult(spec("_fake_report_task", "PCGrad", 2), "failed", error="Traceback\nValueError: exploded"),
        toy_run("MGDA", (-1.5, 1.5), (0.0, 0.0), True),
        toy_run("MGDA", (1.5, -1.5), (0.5, 0.5), True),
        toy_run("LS", (-1.5, 1.5), (1.5, 0.0), False),
        toy_run("LS", (1.5, -1.5), (-0.5, -0.5), True),
    ]
    for result in results:
        store.save(result)
    return store


def test_report_tables_plots_and_failures(store: ResultsStore, tmp_path: Path) -> None:
    page = write_report(store, "suite", tmp_path / "report")
    markdown = (tmp_path / "report" / "index.md").read_text()
    html = page.read_text()

    assert page == tmp_path / "report" / "index.html"
    assert "9 runs: 8 ok, 0 diverged, 1 failed." in markdown
    assert "| Method | Runs | acc ↑ | loss ↓ | Δm% vs ew ↓ | Δp vs ew ↓ | MR | Budget |" in markdown
    # ew's accuracy: 0.85, 0.90: half-width t(0.975, 1) 0.03536 / sqrt(2) = 0.3177 -> 0.32; mean to 0.01.
    # Not significantly different from the best (paired t, p = 0.09): °
    assert "| ew | 2 | **0.88 ± 0.32 (2)** | 0.6 ± 1.3 (2)° | 0.00 | 0.00 | 1.5 | 1 |" in markdown
    # Δm%: accuracy 25.71 % worse, loss 58.33 % better -> −16.31; one metric per task: Δp = Δm%
    pcgrad = "| PCGrad | 2 ok, 1 failed | 0.65 ± 0.64 (2)° | **0.25 ± 0.64 (2)** | -16.31 | -16.31 "
    pcgrad += "| 1.5 | 1 |"
    assert pcgrad in markdown
    assert "<b>0.88 ± 0.32 (2)</b>" in html
    assert "| PCGrad | acc | paired t | 2 / 2 | -0.23 [-0.54, 0.09] | 0.07045 | 0.07045 |" in markdown
    assert "<details><summary>_fake_report_task: significance tests and tuning</summary>" in html
    assert "PCGrad / seed 2: failed: ValueError: exploded" in markdown
    assert "MGDA: 2 of 2 runs ended on the Pareto front" in markdown
    assert "LS: 1 of 2 runs ended on the Pareto front" in markdown

    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", markdown)
    assert sum("landscape" in name for name in images) == sum("loss_space" in name for name in images) == 1
    assert sum("step_time" in name for name in images) == sum("curves" in name for name in images) == 2
    assert all((tmp_path / "report" / name).is_file() for name in images)
    assert html.count('src="data:image/png;base64,') == len(images) == 8
    assert "<style>" in html and "<table>" in html


def test_report_of_an_empty_suite(store: ResultsStore, tmp_path: Path) -> None:
    page = write_report(store, "no such suite", tmp_path / "empty")
    assert "No runs of suite `no such suite`" in (tmp_path / "empty" / "index.md").read_text()
    assert "<code>no such suite</code>" in page.read_text()


def test_report_of_a_suite_whose_runs_all_failed(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.db")
    store.save(RunResult(spec("_fake_report_task", "EW", 0, suite="bad"), "failed", error="KeyError: 'x'"))
    write_report(store, "bad", tmp_path / "bad")
    markdown = (tmp_path / "bad" / "index.md").read_text()
    assert "No run of this suite finished" in markdown
    assert "EW / seed 0: failed: KeyError: 'x'" in markdown


def test_claims_published_numbers_and_kept_settings(store: ResultsStore, tmp_path: Path) -> None:
    settings = ReportSettings(
        claims=(Claim("PCGrad", ("ew",), "loss", "_fake_report_task"),),
        published=(Published("ew", "_fake_report_task", "acc", 0.8, "Paper 2020", "2", "EW"),),
    )
    write_report(store, "suite", tmp_path / "report", settings)
    markdown = (tmp_path / "report" / "index.md").read_text()
    claim = "PCGrad better than ew in loss on _fake_report_task (_fake_report_task): **inconclusive**"
    assert claim in markdown
    assert "| ew | paired t | 2 / 2 | 0.35 [-0.29, 0.99] | 0.09033 | 0.09033 |" in markdown
    # ours 0.875 ± 0.318 covers 0.8: the difference is 0.075
    assert "| ew | acc | 0.8 | 0.88 ± 0.32 (2) | 0.075 | yes | Paper 2020, table 2, row EW |" in markdown
    write_report(store, "suite", tmp_path / "report")  # as `run_all.py report` does: the kept settings
    assert "**inconclusive**" in (tmp_path / "report" / "index.md").read_text()


def test_tuned_runs_are_reported_under_their_method_with_budgets(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.db")
    for seed in (0, 1):
        store.save(classifier_run("ew", seed, 0.8, 0.5))
        for label, acc in (("pcgrad[lr=0.1]", 0.7), ("pcgrad[lr=0.01]", 0.9)):
            store.save(classifier_run(label, seed, acc + seed / 100, 0.5))
    write_report(store, "suite", tmp_path / "report")
    markdown = (tmp_path / "report" / "index.md").read_text()
    results = markdown.split("## Results")[1]  # the Setup section above lists every configuration
    assert "| pcgrad | 2 |" in results and "pcgrad[lr" not in results.split("<details>")[0]
    assert "Unequal tuning budgets (configurations per method: ew 1, pcgrad 2)" in markdown
    assert "| pcgrad | lr=0.1 | 0.9 | ✓ |" in markdown  # all validation scores tie at 0.9: the first


@TASKS.register("_fake_report_pair")
class FakePair(Task):
    """Two losses without a landscape that log their values and their hypervolume reference."""

    eval_splits = ("train",)

    def __init__(self) -> None:
        super().__init__(("q0", "q1"))

    def metrics(self) -> list[Metric]:
        return [Metric("hypervolume", True)]


def pair_run(method: str, seed: int, losses: tuple[float, float]) -> RunResult:
    """Losses at the last evaluation ``losses``, against the reference (2, 4)."""
    rows = []
    for step, scale in ((0, 3.0), (10, 1.0)):
        rows += [MetricRow(step, "train", f"loss/q{i}", scale * v) for i, v in enumerate(losses)]
        rows += [MetricRow(step, "train", f"reference/q{i}", r) for i, r in enumerate((2.0, 4.0))]
        rows.append(MetricRow(step, "train", "hypervolume", 0.5))
    return RunResult(spec("_fake_report_pair", method, seed), "ok", rows, {"step_ms_mean": 1.0})


def test_two_loss_task_gets_its_final_points_against_the_reference(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.db")
    for method, seed, losses in (("ew", 0, (1.0, 1.0)), ("ew", 1, (0.5, 3.0)), ("mgda", 0, (3.0, 2.0))):
        store.save(pair_run(method, seed, losses))
    ev = evaluate(store.runs("suite"), store.metrics("suite"))
    finals = final_loss_ratios("_fake_report_pair", ev)
    assert list(finals) == ["ew", "mgda"]
    np.testing.assert_allclose(finals["ew"], [[0.5, 0.25], [0.25, 0.75]])  # last step, over (2, 4)
    np.testing.assert_allclose(finals["mgda"], [[1.5, 0.5]])
    write_report(store, "suite", tmp_path / "report")
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", (tmp_path / "report" / "index.md").read_text())
    assert "00_fake_report_pair_loss_space.png" in images


def test_only_a_task_with_many_losses_gets_the_per_attribute_plot(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results.db")
    for names, suite in ((["a", "b", "c", "d"], "many"), (["a", "b"], "two")):
        for method, seed in (("ew", 0), ("PCGrad", 0), ("ew", 1)):
            rows = [MetricRow(10, "val", "acc", 0.5)]
            for split in ("val", "test"):
                rows += [MetricRow(10, split, f"error/{n}", 0.1 * i + seed) for i, n in enumerate(names)]
            params = {"task_names": names}
            run_spec = spec("_fake_report_task", method, seed, params, suite)
            store.save(RunResult(run_spec, "ok", rows, {"step_ms_mean": 1.0}))
    for suite, expected in (("many", 1), ("two", 0)):
        write_report(store, suite, tmp_path / suite)
        markdown = (tmp_path / suite / "index.md").read_text()
        assert markdown.count("_attributes.png") == expected
        assert markdown.count("per-task values (means over runs)") == expected
