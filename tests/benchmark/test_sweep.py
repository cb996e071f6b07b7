"""Sweeps: every run stored, resume skips finished runs, a failing run does not stop the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.config import parse_suite
from benchmark.store import ResultsStore
from benchmark.sweep import pending_runs, run_suite
from benchmark.trainer import RunResult, Trainer
from tests.benchmark import linear_task

SUITE = {
    "name": "sweep_test",
    "seeds": [0, 1],
    "train": {"steps": 4, "eval_every": 2, "jacobian": "loop"},
    "tasks": [{"name": "_linear"}],
    "methods": ["ew", "pcgrad"],
}


def test_sweep_stores_every_run_and_resumes(tmp_path: Path) -> None:
    suite, store = parse_suite(SUITE), ResultsStore(tmp_path / "store.sqlite")
    assert run_suite(suite, store, progress=False) == {"ok": 4}
    assert len(store.runs("sweep_test")) == 4
    assert pending_runs(suite, store) == []
    assert run_suite(suite, store, progress=False) == {}
    assert sum(run_suite(suite, store, rerun=True, progress=False).values()) == 4
    assert len(store.runs("sweep_test")) == 4


def test_failed_run_is_stored_and_retried_on_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suite, store = parse_suite(SUITE), ResultsStore(tmp_path / "store.sqlite")
    broken = suite.runs[1].config_hash()
    train = Trainer.train

    def flaky(self: Trainer, progress: bool = False) -> RunResult:
        if self.spec.config_hash() == broken:
            raise RuntimeError("boom")
        return train(self, progress)

    monkeypatch.setattr(Trainer, "train", flaky)
    assert run_suite(suite, store, progress=False) == {"ok": 3, "failed": 1}
    failed = store.runs("sweep_test").query("status == 'failed'")
    assert list(failed.config_hash) == [broken] and "RuntimeError: boom" in failed.error.iloc[0]
    assert [s.config_hash() for s in pending_runs(suite, store)] == [broken]


def test_process_executor(tmp_path: Path) -> None:
    raw = {**SUITE, "methods": ["ew"], "plugins": [linear_task.__file__]}  # workers load the test task
    suite, store = parse_suite(raw), ResultsStore(tmp_path / "store.sqlite")
    assert run_suite(suite, store, executor="processes", workers=2, progress=False) == {"ok": 2}
    serial = ResultsStore(tmp_path / "serial.sqlite")
    run_suite(suite, serial, progress=False)
    columns = ["seed", "step", "split", "name", "value"]
    by_process = store.metrics("sweep_test")[columns].sort_values(columns[:4]).reset_index(drop=True)
    by_serial = serial.metrics("sweep_test")[columns].sort_values(columns[:4]).reset_index(drop=True)
    assert by_process.equals(by_serial)
