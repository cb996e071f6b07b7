"""The results store: round trip, replace-on-rerun in one transaction, resume semantics, concurrency."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from benchmark.specs import PluginSpec, RunSpec, TrainSpec
from benchmark.store import SCHEMA_VERSION, Owner, ResultsStore, StoreError
from benchmark.trainer import MetricRow, RunResult

ROOT = Path(__file__).resolve().parents[2]


def make_result(seed: int = 0, status: str = "ok", suite: str = "s", scale: float = 1.0) -> RunResult:
    spec = RunSpec(
        suite=suite,
        task=PluginSpec("toy", {"start": [1.0, 2.0]}, label="toy A"),
        method=PluginSpec("pcgrad", {}, label="PCGrad"),
        seed=seed,
        train=TrainSpec(steps=20, eval_every=10),
    )
    rows = [
        MetricRow(step, split, name, scale * (step + seed) + (name == "loss"))
        for step in (0, 10, 20)
        for split in ("val", "test")
        for name in ("acc", "loss")
    ]
    error = "Traceback\nRuntimeError: boom" if status == "failed" else None
    return RunResult(spec, status, rows, {"step_ms_mean": 1.5 * scale, "train_s": 0.25}, error, 10.0, 12.5)


def test_round_trip(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "deep" / "results.db")
    results = [make_result(seed=0), make_result(seed=1, status="failed"), make_result(suite="other")]
    run_ids = [store.save(r) for r in results]

    runs = store.runs("s")
    assert list(runs["run_id"]) == run_ids[:2]
    first = runs.iloc[0]
    spec = results[0].spec
    assert (first["config_hash"], first["task"], first["task_label"]) == (spec.config_hash(), "toy", "toy A")
    assert (first["method"], first["method_label"], first["seed"]) == ("pcgrad", "PCGrad", 0)
    assert (first["status"], first["started"], first["ended"]) == ("ok", 10.0, 12.5)
    assert first["spec"] == json.loads(json.dumps(spec.to_dict()))
    assert {"python", "torch", "numpy", "pandas", "platform"} <= set(first["versions"])
    assert runs.iloc[1]["error"] == results[1].error

    metrics = store.metrics("s")
    saved = [
        (run_id, m.step, m.split, m.name, m.value)
        for run_id, r in zip(run_ids[:2], results[:2], strict=True)
        for m in r.metrics
    ]
    assert (
        list(metrics[["run_id", "step", "split", "name", "value"]].itertuples(index=False, name=None))
        == saved
    )
    assert set(metrics.loc[metrics["run_id"] == run_ids[1], "status"]) == {"failed"}
    assert {"suite", "task_label", "method_label", "seed", "status"} <= set(metrics.columns)

    timings = store.timings("s")
    assert (
        dict(timings.loc[timings["run_id"] == run_ids[0], ["name", "value"]].itertuples(index=False))
        == results[0].timings
    )
    assert store.suites() == ["other", "s"]
    assert len(store.runs()) == 3
    assert store.runs("missing").empty


def test_nan_values_read_back_as_nan(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.db")
    result = make_result(status="diverged")
    result.metrics.append(MetricRow(30, "val", "loss", math.nan))
    store.save(result)
    assert math.isnan(store.metrics()["value"].iloc[-1])


def test_rerun_replaces_the_record_with_the_same_hash(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.db")
    store.save(make_result(status="failed"))
    store.save(make_result(seed=1))
    new_id = store.save(make_result(status="ok", scale=2.0))

    runs = store.runs()
    assert sorted(runs["seed"]) == [0, 1]
    assert runs.set_index("seed").loc[0, "status"] == "ok"
    metrics = store.metrics()
    assert set(metrics.loc[metrics["seed"] == 0, "run_id"]) == {new_id}
    assert len(metrics) == 2 * len(make_result().metrics)
    assert set(store.timings().query("seed == 0")["value"]) == {3.0, 0.25}


def test_a_failing_save_leaves_the_earlier_record_intact(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.db")
    store.save(make_result())
    broken = make_result()
    broken.metrics.append(MetricRow(30, "val", "acc", "not a number"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.save(broken)
    assert len(store.runs()) == 1
    assert len(store.metrics()) == len(make_result().metrics)
    assert len(store.timings()) == 2


def test_finished_hashes_are_ok_and_diverged_runs(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.db")
    results = {
        status: make_result(seed=i, status=status) for i, status in enumerate(("ok", "diverged", "failed"))
    }
    for result in results.values():
        store.save(result)
    assert store.finished_hashes() == {results[s].spec.config_hash() for s in ("ok", "diverged")}


WRITER = """
import time
from contextlib import closing
from pathlib import Path

from benchmark.store import ResultsStore
from test_store import make_result

store = ResultsStore({path!r})
Path({ready!r}).touch()
while not Path({go!r}).exists():
    time.sleep(0.005)
for seed in range({first}, {first} + {count}):
    store.save(make_result(seed=seed))
"""


def wait_for(paths: list[Path], writers: list[subprocess.Popen]) -> None:
    """Wait until every writer has created its file (or one has exited, which the caller then reports)."""
    while not all(p.exists() for p in paths) and all(w.poll() is None for w in writers):
        time.sleep(0.005)


def test_concurrent_writers_lose_no_rows(tmp_path: Path) -> None:
    """Two processes, released at the same moment, each save runs one transaction at a time."""
    path, go, count = tmp_path / "r.db", tmp_path / "go", 30
    ResultsStore(path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)])}
    ready = [tmp_path / f"ready{first}" for first in (0, 1000)]
    scripts = [
        WRITER.format(path=str(path), ready=str(flag), go=str(go), first=first, count=count)
        for flag, first in zip(ready, (0, 1000), strict=True)
    ]
    writers = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env) for script in scripts]
    wait_for(ready, writers)
    go.touch()
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    store = ResultsStore(path)
    assert len(store.runs()) == 2 * count
    assert len(store.metrics()) == 2 * count * len(make_result().metrics)
    assert len(store.timings()) == 2 * count * 2


def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    with pytest.raises(StoreError, match=r"notes\.txt"):
        ResultsStore(text)
    with pytest.raises(StoreError, match="directory"):
        ResultsStore(tmp_path)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(StoreError, match=r"other\.db"):
        ResultsStore(other)


def test_opening_without_create_refuses_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "none" / "store.sqlite"
    with pytest.raises(StoreError, match=r"none/store\.sqlite: no results store"):
        ResultsStore(path, create=False)
    assert not path.parent.exists()
    ResultsStore(path)
    assert ResultsStore(path, create=False).suites() == []


def corrupt_pages(path: Path) -> None:
    """Overwrite every page but the first (the header and schema) with garbage."""
    page = 4096
    data = bytearray(path.read_bytes())
    data[page:] = bytes((7 * i + 3) % 256 for i in range(len(data) - page))
    path.write_bytes(bytes(data))


def test_a_store_with_corrupted_pages_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    store = ResultsStore(path)
    for seed in range(5):
        store.save(make_result(seed=seed))
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    corrupt_pages(path)
    with pytest.raises(StoreError, match=r"r\.db: .*corrupt"):
        ResultsStore(path).runs()


def test_the_store_records_its_schema_version_and_a_version_2_store_gains_claims(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    ResultsStore(path).save(make_result(seed=3))
    with closing(sqlite3.connect(path)) as conn:  # as version 2 left it: no claims table
        conn.execute("DROP TABLE claims")
        conn.execute("PRAGMA user_version = 2")
        conn.commit()
    store = ResultsStore(path)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    assert list(store.runs().seed) == [3] and store.claims().empty
    assert store.claim(["a"], Owner("h", 1), expire_after=60) == {"a"}


def test_a_claimed_run_is_not_claimed_by_another_owner_until_it_expires(tmp_path: Path) -> None:
    store, me = ResultsStore(tmp_path / "r.db"), Owner.this_process()
    other = Owner("another-host", 1)  # its liveness cannot be checked here: only the heartbeat tells
    assert store.claim(["a", "b"], other, expire_after=60) == {"a", "b"}
    assert store.claim(["a", "b", "c"], me, expire_after=60) == {"c"}
    assert store.claim(["c"], me, expire_after=60) == {"c"}  # claiming one's own claim again is fine
    time.sleep(0.02)
    store.heartbeat(me)
    assert store.claim(["a", "b"], me, expire_after=0.01) == {"a", "b"}  # other's heartbeat is too old
    assert set(store.claims().host) == {me.host} and set(store.claims().pid) == {me.pid}
    store.release(me)
    assert store.claims().empty


def test_a_claim_of_a_dead_process_on_this_host_expires_at_once(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = ResultsStore(tmp_path / "r.db")
    store.claim(["a"], Owner(Owner.this_process().host, dead.pid), expire_after=3600)
    assert store.claim(["a"], Owner.this_process(), expire_after=3600) == {"a"}


def test_saving_a_run_drops_its_claim_and_a_finished_run_is_not_claimed(tmp_path: Path) -> None:
    store, me, result = ResultsStore(tmp_path / "r.db"), Owner.this_process(), make_result()
    failed = make_result(seed=1, status="failed")
    hashes = [result.spec.config_hash(), failed.spec.config_hash()]
    assert store.claim(hashes, me, 60) == set(hashes)
    store.save(result)
    store.save(failed)
    assert store.claims().empty
    assert store.claim(hashes, me, 60) == {hashes[1]}  # a failed run is run again
    assert store.claim(hashes, me, 60, rerun=True) == set(hashes)
