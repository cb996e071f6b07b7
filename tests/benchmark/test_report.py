"""The report, end to end on a temporary store filled with hand-made results of two fake tasks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import Tensor

from benchmark.registry import TASKS
from benchmark.report import write_report
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
    assert "| Method | Runs | acc ↑ | loss ↓ | Δm% vs ew ↓ | Mean rank |" in markdown
    assert "| ew | 2 | **0.875 ± 0.035 (2)** | 0.60 ± 0.14 (2) | 0 | 1.5 |" in markdown
    # Δm%: accuracy 25.71 % worse, loss 58.33 % better -> −16.31
    pcgrad = "| PCGrad | 2 ok, 1 failed | 0.650 ± 0.071 (2) | **0.250 ± 0.071 (2)** | -16.31 | 1.5 |"
    assert pcgrad in markdown
    assert "<b>0.875 ± 0.035 (2)</b>" in html
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
