"""Exports: the store as CSV files, the format checks, the report's tables as CSV and LaTeX."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from benchmark.export import ExportError, export_store
from benchmark.report import Table, write_tables
from benchmark.specs import PluginSpec, RunSpec, TrainSpec
from benchmark.store import ResultsStore
from benchmark.trainer import DiagnosticRow, MetricRow, RunResult
from run_all import main


def result(suite: str, seed: int, scale: float) -> RunResult:
    method = PluginSpec("sign_vote", {"scale": scale}, "sign_vote")
    spec = RunSpec(suite, PluginSpec("toy2d", {"start": 1}), method, seed, TrainSpec(lr=0.02))
    metrics = [MetricRow(10, "val", "acc", 0.5 + seed), MetricRow(10, "val", "loss", 2.0)]
    return RunResult(
        spec, "ok", metrics, {"step_ms_mean": 3.0}, diagnostics=[DiagnosticRow(0, "cos_mean", -0.25)]
    )


@pytest.fixture
def store(tmp_path: Path) -> ResultsStore:
    store = ResultsStore(tmp_path / "store.sqlite")
    for seed in (0, 1):
        store.save(result("a", seed, 0.5))
    store.save(result("b", 0, 1.0))
    return store


def test_csv_export_of_one_suite_reads_back_in_pandas(store: ResultsStore, tmp_path: Path) -> None:
    written = export_store(store, tmp_path / "out", suite="a")
    assert [p.name for p in written] == ["runs.csv", "metrics.csv", "timings.csv", "diagnostics.csv"]
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert list(runs["seed"]) == [0, 1] and set(runs["suite"]) == {"a"}
    assert list(runs["method_params"]) == ['{"scale": 0.5}', '{"scale": 0.5}']
    assert list(runs["train.lr"]) == [0.02, 0.02] and list(runs["train.steps"]) == [1000, 1000]
    metrics = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert sorted(metrics.loc[metrics["name"] == "acc", "value"]) == [0.5, 1.5]
    assert list(pd.read_csv(tmp_path / "out" / "diagnostics.csv")["value"]) == [-0.25, -0.25]


def test_export_errors_name_the_problem(store: ResultsStore, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"no suite 'c' in the store \(it holds a, b\)"):
        export_store(store, tmp_path / "out", suite="c")
    with pytest.raises(ExportError, match="unknown format 'xlsx'"):
        export_store(store, tmp_path / "out", fmt="xlsx")


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow is installed")
def test_parquet_without_pyarrow_says_what_to_install(store: ResultsStore, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"needs pyarrow \(pip install pyarrow\)"):
        export_store(store, tmp_path / "out", fmt="parquet")


def test_cli_export_writes_every_suite_and_fails_with_exit_2(store: ResultsStore, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    assert main(["export", "--results", str(store.path), "--output", str(out)]) == 0
    assert sorted(pd.read_csv(out / "runs.csv")["suite"]) == ["a", "a", "b"]
    assert main(["export", "--results", str(store.path), "--suite", "zzz", "--output", str(out)]) == 2


def test_report_tables_as_csv_and_latex(tmp_path: Path) -> None:
    table = Table(
        ["Method", "acc ↑", "Δm% vs ew ↓"],
        [["ew", "0.90 ± 0.01 (3)", "0"], ["pc_grad", "0.8", "5"]],
        bold={(0, 1)},
        name="res",
    )
    written = write_tables([table, Table(["x"], [["unnamed: not exported"]])], tmp_path)
    assert [p.name for p in written] == ["res.csv", "res.tex"]
    assert pd.read_csv(tmp_path / "res.csv").iloc[0].tolist() == ["ew", "0.90 ± 0.01 (3)", 0]
    latex = (tmp_path / "res.tex").read_text()
    assert r"\textbf{0.90 $\pm$ 0.01 (3)}" in latex and r"pc\_grad" in latex
    assert r"$\Delta$m\% vs ew $\downarrow$" in latex and r"\begin{tabular}{lrr}" in latex
