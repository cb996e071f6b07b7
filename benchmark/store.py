"""The results store: one SQLite file with every run, its metric rows and its timings; pandas out.

Several processes may write to the same store: the file is in WAL mode (https://sqlite.org/wal.html),
each write is one ``BEGIN IMMEDIATE`` transaction, and a writer waits up to ``timeout`` seconds for the
lock (the busy timeout). A transaction is all or nothing, so a process killed at any moment leaves
every committed run and no partial one. (WAL needs a local file system; do not put the store on a
network share.)

Two sweeps on one store never train one configuration twice: before training, a sweep *claims* its
runs (table ``claims``: config hash, owner host and pid, heartbeat time), skips runs another live
sweep holds, and keeps its claims fresh; saving a run drops its claim. A claim expires when its owner
is gone (a pid that no longer exists on this host) or its heartbeat is older than the expiry time.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from benchmark.errors import UserError
from benchmark.specs import RunSpec, TaskInfo

if TYPE_CHECKING:
    from benchmark.trainer import RunResult

SCHEMA_VERSION = 3
"""1: the first; 2: ``runs.info`` (the task's metric declarations, :class:`benchmark.specs.TaskInfo`)
and config hashes that leave out the device; 3: the ``claims`` table (which sweep trains which run),
the ``diagnostics`` table (gradient-conflict values per run and step) and the ``suites`` table (each
suite's description). An older store is migrated when opened; the version is kept in the file
(``PRAGMA user_version``)."""
FINISHED = ("ok", "diverged")
RUN_LABELS = ("suite", "task", "task_label", "method_label", "seed", "status")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    config_hash TEXT NOT NULL,
    suite TEXT NOT NULL,
    task TEXT NOT NULL,
    task_label TEXT NOT NULL,
    method TEXT NOT NULL,
    method_label TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    started REAL,
    ended REAL,
    spec TEXT NOT NULL,
    versions TEXT NOT NULL,
    info TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL, step INTEGER NOT NULL, split TEXT NOT NULL, name TEXT NOT NULL, value REAL
);
CREATE TABLE IF NOT EXISTS timings (run_id INTEGER NOT NULL, name TEXT NOT NULL, value REAL);
CREATE TABLE IF NOT EXISTS claims (
    config_hash TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS diagnostics (
    run_id INTEGER NOT NULL, step INTEGER NOT NULL, name TEXT NOT NULL, value REAL
);
CREATE TABLE IF NOT EXISTS suites (name TEXT PRIMARY KEY, description TEXT NOT NULL, source TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS runs_config_hash ON runs (config_hash);
CREATE INDEX IF NOT EXISTS runs_suite ON runs (suite);
CREATE INDEX IF NOT EXISTS metrics_run_id ON metrics (run_id);
CREATE INDEX IF NOT EXISTS timings_run_id ON timings (run_id);
CREATE INDEX IF NOT EXISTS diagnostics_run_id ON diagnostics (run_id);
"""


class StoreError(UserError):
    """The path is not a results store (missing, another file, another SQLite database, a newer schema,
    corrupted pages)."""


@dataclass(frozen=True)
class Owner:
    """The process that claims runs: its host name and pid."""

    host: str
    pid: int

    @classmethod
    def this_process(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid())

    def gone(self) -> bool:
        """Whether the owner is known to have exited: a pid that no longer exists on this host
        (another host's process cannot be checked from here: its heartbeat tells)."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # exists, owned by another user
            return False
        return False


@cache
def environment() -> dict[str, str | None]:
    """Versions of Python and the numeric libraries, and the platform, recorded with each run."""

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        **{name: version(name) for name in ("torch", "numpy", "pandas")},
        "platform": platform.platform(),
    }


def run_record(result: RunResult) -> dict[str, Any]:
    """The ``runs`` row of a result (all columns but ``run_id``)."""
    spec = result.spec
    return {
        "config_hash": spec.config_hash(),
        "suite": spec.suite,
        "task": spec.task.name,
        "task_label": spec.task.label,
        "method": spec.method.name,
        "method_label": spec.method.label,
        "seed": spec.seed,
        "status": result.status,
        "error": result.error,
        "started": result.started,
        "ended": result.ended,
        "spec": json.dumps(spec.to_dict(), default=str),
        "versions": json.dumps(environment()),
        "info": None if result.info is None else json.dumps(result.info.to_dict()),
    }


def _migrate_from_1(conn: sqlite3.Connection) -> None:
    """Version 1 -> 2: add ``runs.info`` (unknown for old runs: reports then build their tasks) and
    recompute every config hash without the device; of runs that now share a hash the newest stays."""
    conn.execute("ALTER TABLE runs ADD COLUMN info TEXT")
    conn.execute("DROP INDEX IF EXISTS runs_config_hash")
    rows = conn.execute("SELECT run_id, spec FROM runs ORDER BY run_id").fetchall()
    newest = {RunSpec.from_dict(json.loads(spec)).config_hash(): run_id for run_id, spec in rows}
    for config_hash, run_id in newest.items():
        conn.execute("UPDATE runs SET config_hash = ? WHERE run_id = ?", (config_hash, run_id))
    stale = [(run_id,) for run_id, _ in rows if run_id not in set(newest.values())]
    for table in ("metrics", "timings", "runs"):  # version 1 has no diagnostics table
        conn.executemany(f"DELETE FROM {table} WHERE run_id = ?", stale)


class ResultsStore:
    """Runs, metrics and timings of every suite in one SQLite file.

    With ``create`` (to write runs) a missing file is created with its parent directory; without (to
    read, as reports do) a missing file is a :class:`StoreError`. Opening checks the file's integrity
    (``PRAGMA quick_check``), so a corrupted store fails here, naming the file, not in a later query.
    """

    def __init__(self, path: str | Path, timeout: float = 60.0, create: bool = True) -> None:
        self.path = Path(path)
        self.timeout = timeout
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, not a results store")
        if not create and not self.path.is_file():
            raise StoreError(f"{self.path}: no results store here (run a suite first, or give --results)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._initialise()
            self._check_integrity()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a results store, or a corrupt one ({exc})") from exc

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)) as conn:
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock up front, so that concurrent writers queue."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _initialise(self) -> None:
        """Check the file and create the schema; an up-to-date store is only read."""
        with self._connect() as conn:
            if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
                return
        with self._transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version == 0 and tables:
                raise StoreError(f"{self.path}: an SQLite database, but not a results store")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {version} is newer than this code's {SCHEMA_VERSION}: "
                    "update Gradient Surgery Bench, or use another --results file"
                )
            if version == 1:
                _migrate_from_1(conn)
            # 2 -> 3 adds the claims, diagnostics and suites tables, which the schema below creates
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")

    def _check_integrity(self) -> None:
        """``PRAGMA quick_check`` (https://sqlite.org/pragma.html#pragma_quick_check): "ok", or the
        problems it found."""
        with self._connect() as conn:
            rows = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
        if rows != ["ok"]:
            problems = [line for row in rows for line in row.splitlines() if not line.startswith("***")]
            raise StoreError(f"{self.path}: the store is corrupt: {'; '.join(problems)}")

    def save(self, result: RunResult) -> int:
        """Write a run and all its rows in one transaction, replacing a record with the same config hash.

        Returns the new ``run_id``.
        """
        record = run_record(result)
        columns, names = ", ".join(record), ", ".join(f":{c}" for c in record)
        with self._transaction() as conn:
            self._delete(conn, record["config_hash"])
            conn.execute("DELETE FROM claims WHERE config_hash = ?", (record["config_hash"],))
            cursor = conn.execute(f"INSERT INTO runs ({columns}) VALUES ({names})", record)
            run_id = int(cursor.lastrowid)
            conn.executemany(
                "INSERT INTO metrics (run_id, step, split, name, value) VALUES (?, ?, ?, ?, ?)",
                [(run_id, int(m.step), m.split, m.name, float(m.value)) for m in result.metrics],
            )
            conn.executemany(
                "INSERT INTO timings (run_id, name, value) VALUES (?, ?, ?)",
                [(run_id, name, float(value)) for name, value in result.timings.items()],
            )
            conn.executemany(
                "INSERT INTO diagnostics (run_id, step, name, value) VALUES (?, ?, ?, ?)",
                [(run_id, int(d.step), d.name, float(d.value)) for d in result.diagnostics],
            )
        return run_id

    def save_suite(self, name: str, description: str, source: str | Path | None = None) -> None:
        """Record (or update) a suite's description and file, shown by its report."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO suites (name, description, source) VALUES (?, ?, ?)",
                (name, description, None if source is None else str(source)),
            )

    def suite_description(self, name: str) -> str:
        """The description :meth:`save_suite` recorded for ``name`` (``""`` if none)."""
        with self._connect() as conn:
            row = conn.execute("SELECT description FROM suites WHERE name = ?", (name,)).fetchone()
        return "" if row is None else str(row[0])

    @staticmethod
    def _delete(conn: sqlite3.Connection, config_hash: str) -> None:
        old = [r[0] for r in conn.execute("SELECT run_id FROM runs WHERE config_hash = ?", (config_hash,))]
        for table in ("metrics", "timings", "diagnostics", "runs"):
            conn.executemany(f"DELETE FROM {table} WHERE run_id = ?", [(run_id,) for run_id in old])

    def finished_hashes(self) -> set[str]:
        """Config hashes of runs that need no re-run: ``ok`` and ``diverged`` (``failed`` is retried)."""
        with self._connect() as conn:
            return self._finished(conn)

    @staticmethod
    def _finished(conn: sqlite3.Connection) -> set[str]:
        marks = ", ".join("?" * len(FINISHED))
        query = f"SELECT config_hash FROM runs WHERE status IN ({marks})"
        return {r[0] for r in conn.execute(query, FINISHED)}

    def claim(
        self, hashes: Sequence[str], owner: Owner, expire_after: float, rerun: bool = False
    ) -> set[str]:
        """Claim the runs of ``hashes`` for ``owner`` in one transaction and return those it now holds:
        not finished (unless ``rerun``) and not held by another owner whose claim is alive. Expired
        claims (:meth:`Owner.gone`, or a heartbeat older than ``expire_after`` seconds) are dropped."""
        now = time.time()
        with self._transaction() as conn:
            owners = conn.execute("SELECT host, pid, MAX(heartbeat) FROM claims GROUP BY host, pid")
            for host, pid, heartbeat in owners.fetchall():
                if Owner(host, pid).gone() or heartbeat < now - expire_after:
                    conn.execute("DELETE FROM claims WHERE host = ? AND pid = ?", (host, pid))
            held = dict(conn.execute("SELECT config_hash, host || ':' || pid FROM claims").fetchall())
            done = set() if rerun else self._finished(conn)
            mine = f"{owner.host}:{owner.pid}"
            free = [h for h in hashes if h not in done and held.get(h, mine) == mine]
            conn.executemany(
                "INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?)",
                [(h, owner.host, owner.pid, now) for h in free],
            )
        return set(free)

    def heartbeat(self, owner: Owner) -> None:
        """Mark ``owner``'s claims as alive now."""
        with self._transaction() as conn:
            query = "UPDATE claims SET heartbeat = ? WHERE host = ? AND pid = ?"
            conn.execute(query, (time.time(), owner.host, owner.pid))

    def release(self, owner: Owner) -> None:
        """Drop every claim ``owner`` still holds (runs it did not finish)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM claims WHERE host = ? AND pid = ?", (owner.host, owner.pid))

    def claims(self) -> pd.DataFrame:
        """Current claims: ``config_hash, host, pid, heartbeat``."""
        with self._connect() as conn:
            return pd.read_sql_query("SELECT * FROM claims ORDER BY config_hash", conn)

    def suites(self) -> list[str]:
        with self._connect() as conn:
            return [r[0] for r in conn.execute("SELECT DISTINCT suite FROM runs ORDER BY suite")]

    def runs(self, suite: str | None = None) -> pd.DataFrame:
        """One row per run, in run order; ``spec`` and ``versions`` are decoded to dicts."""
        frame = self._query("SELECT * FROM runs", suite, "runs.run_id")
        for column in ("spec", "versions"):
            frame[column] = [json.loads(text) for text in frame[column]]
        frame["info"] = [  # NULL (a failed run, or one stored by version 1) may come back as NaN
            TaskInfo.from_dict(json.loads(t)) if isinstance(t, str) else None for t in frame["info"]
        ]
        return frame

    def metrics(self, suite: str | None = None) -> pd.DataFrame:
        """Every metric row (``run_id, step, split, name, value``) with its run's labels and status."""
        return self._rows("metrics", suite)

    def timings(self, suite: str | None = None) -> pd.DataFrame:
        """Every timing (``run_id, name, value``) with its run's labels and status."""
        return self._rows("timings", suite)

    def diagnostics(self, suite: str | None = None) -> pd.DataFrame:
        """Every diagnostic value (``run_id, step, name, value``) with its run's labels and status."""
        return self._rows("diagnostics", suite)

    def _rows(self, table: str, suite: str | None) -> pd.DataFrame:
        labels = ", ".join(f"runs.{c}" for c in RUN_LABELS)
        query = f"SELECT {table}.*, {labels} FROM {table} JOIN runs USING (run_id)"
        return self._query(query, suite, f"{table}.run_id, {table}.rowid")

    def _query(self, query: str, suite: str | None, order: str) -> pd.DataFrame:
        params: tuple[Any, ...] = ()
        if suite is not None:
            query += " WHERE runs.suite = ?"
            params = (suite,)
        with self._connect() as conn:
            return pd.read_sql_query(f"{query} ORDER BY {order}", conn, params=params)
