"""Sweeps: every run stored, resume skips finished runs, a failing run does not stop the others."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import torch

import run_all
from benchmark.config import load_suite, parse_suite
from benchmark.errors import UserError
from benchmark.registry import UnknownNameError
from benchmark.store import ResultsStore
from benchmark.sweep import EXECUTORS, Executor, check_devices, pending_runs, run_suite
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


def test_executors_are_a_registry_and_the_cli_offers_its_names() -> None:
    assert EXECUTORS.names() == ["processes", "ray", "serial"]
    assert all(issubclass(EXECUTORS.get(name), Executor) for name in EXECUTORS.names())
    assert run_all.parse_args(["run", "--executor", "serial"]).executor == "serial"
    with pytest.raises(UnknownNameError, match=r"unknown executor 'seriall' \(did you mean 'serial'\?\)"):
        EXECUTORS.get("seriall")


def test_an_executor_yields_one_result_per_spec() -> None:
    specs = parse_suite(SUITE).runs
    results = list(EXECUTORS.create("serial", progress=False).run(specs))
    assert [r.spec for r in results] == list(specs) and {r.status for r in results} == {"ok"}


def test_command_line_plugins_travel_with_every_run(tmp_path: Path) -> None:
    """Workers build runs from their specs alone: a --plugin file must be in every spec."""
    other = tmp_path / "other_plugin.py"
    other.write_text("VALUE = 1\n")
    raw = {**SUITE, "plugins": [linear_task.__file__]}
    suite = parse_suite(raw, plugins=[other, linear_task.__file__])
    expected = (str(other.resolve()), str(Path(linear_task.__file__).resolve()))
    assert {spec.plugins for spec in suite.runs} == {expected}


@pytest.mark.skipif(torch.accelerator.is_available(), reason="checks a machine without an accelerator")
@pytest.mark.parametrize("executor", ["serial", "processes"])
def test_a_missing_device_fails_before_any_run(tmp_path: Path, executor: str) -> None:
    suite, store = parse_suite(SUITE, overrides={"device": "cuda"}), ResultsStore(tmp_path / "store.sqlite")
    with pytest.raises(UserError, match=r"train.device \(or --device\): 'cuda': CUDA is not available"):
        run_suite(suite, store, executor=executor, workers=2, progress=False)
    assert len(store.runs("sweep_test")) == 0


def test_a_device_index_beyond_the_machine_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        torch.accelerator, "current_accelerator", lambda check_available: torch.device("cuda")
    )
    monkeypatch.setattr(torch.accelerator, "device_count", lambda: 2)
    specs = parse_suite(SUITE, overrides={"device": "cuda:1"}).runs
    check_devices(specs)  # cuda:1 is the second of two devices
    check_devices(parse_suite(SUITE, overrides={"device": "cpu"}).runs)
    with pytest.raises(UserError, match=r"'cuda:2': this machine has 2 cuda device\(s\) \(run _linear / ew"):
        check_devices(parse_suite(SUITE, overrides={"device": "cuda:2"}).runs)
    with pytest.raises(UserError, match="'mps': MPS is not available"):
        check_devices(parse_suite(SUITE, overrides={"device": "mps"}).runs)


ROOT = Path(__file__).resolve().parents[2]


def write_suite(tmp_path: Path, name: str, seeds: int, steps: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nseeds: {seeds}\nplugins: [{linear_task.__file__}]\n"
        f"train: {{steps: {steps}, eval_every: {steps}, jacobian: loop}}\ntasks: [_linear]\nmethods: [ew]\n"
    )
    return path


def driver(suite: Path, store: Path, log: Path, *options: str) -> subprocess.Popen[bytes]:
    """``run_all.py run`` in a subprocess, its output in ``log``."""
    command = [sys.executable, "run_all.py", "run", "--suite", str(suite), "--results", str(store)]
    with log.open("wb") as out:
        return subprocess.Popen([*command, "--no-report", *options], cwd=ROOT, stdout=out, stderr=out)


def stored(store: Path) -> int:
    if not store.exists():
        return 0
    with closing(sqlite3.connect(store, timeout=30)) as conn:
        try:
            return conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'ok'").fetchone()[0]
        except sqlite3.OperationalError:  # the schema is not there yet
            return 0


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from Linux /proc")
def test_kill_9_of_the_driver_loses_no_finished_run_and_leaves_no_worker(tmp_path: Path) -> None:
    suite, store = write_suite(tmp_path, "killed", seeds=6, steps=1500), tmp_path / "store.sqlite"
    log = tmp_path / "driver.log"
    proc = driver(suite, store, log, "--executor", "processes", "--workers", "2")
    while stored(store) < 1 and proc.poll() is None:
        time.sleep(0.05)
    workers = children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = stored(store)
    assert 1 <= finished < 6, log.read_text()
    deadline = time.monotonic() + 20
    while any(map(running, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert workers and not any(map(running, workers))
    with closing(sqlite3.connect(store)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    results = ResultsStore(store)
    before = len(results.runs("killed"))
    assert before >= finished  # a run may have been saved after the count
    assert run_suite(load_suite(suite), results, progress=False) == {"ok": 6 - before}  # claims expired
    assert len(results.runs("killed")) == 6


@pytest.mark.slow
def test_two_sweeps_on_one_store_train_every_run_once(tmp_path: Path) -> None:
    suite, store = write_suite(tmp_path, "twice", seeds=6, steps=300), tmp_path / "store.sqlite"
    ResultsStore(store)
    outputs = [tmp_path / f"sweep{i}.log" for i in range(2)]
    sweeps = [driver(suite, store, out, "--executor", "serial") for out in outputs]
    codes = [sweep.wait(timeout=300) for sweep in sweeps]
    logs = [out.read_text() for out in outputs]
    assert codes == [0, 0], logs
    trained = [int(m) for log in logs for m in re.findall(r"suite twice: \{'ok': (\d+)\}", log)]
    assert sum(trained) == 6, logs
    runs = ResultsStore(store).runs("twice")
    assert sorted(runs.seed) == list(range(6)) and ResultsStore(store).claims().empty
