"""The results store as flat files for analysis in pandas: runs, metrics, timings and diagnostics.

``runs`` has one row per run with its spec flattened: ``task_params`` and ``method_params`` as JSON
text and one ``train.<setting>`` column per training setting; the other tables are the store's rows
with their run's labels (:meth:`benchmark.store.ResultsStore.metrics`). CSV is written by
``DataFrame.to_csv``, Parquet by ``DataFrame.to_parquet`` (needs ``pyarrow``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pandas as pd

from benchmark.errors import UserError
from benchmark.store import ResultsStore

logger = logging.getLogger(__name__)

FORMATS = ("csv", "parquet")
TABLES = ("runs", "metrics", "timings", "diagnostics")


class ExportError(UserError):
    """An export that cannot be written (an unknown format, a missing library, an unknown suite)."""


def flat_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The store's runs frame with plain columns: spec, versions and info as JSON text, the task's
    and method's parameters as JSON text and every training setting as a ``train.<name>`` column."""
    specs = runs["spec"]
    flat = runs.drop(columns=["spec", "versions", "info"]).assign(
        task_params=[json.dumps(s["task"]["params"], sort_keys=True, default=str) for s in specs],
        method_params=[json.dumps(s["method"]["params"], sort_keys=True, default=str) for s in specs],
    )
    train = pd.DataFrame([s["train"] for s in specs], index=runs.index).add_prefix("train.")
    extra = pd.DataFrame(
        {
            "spec": [json.dumps(s, sort_keys=True, default=str) for s in specs],
            "versions": [json.dumps(v, sort_keys=True) for v in runs["versions"]],
            "info": [None if i is None else json.dumps(i.to_dict()) for i in runs["info"]],
        },
        index=runs.index,
    )
    return pd.concat([flat, train, extra], axis=1)


def store_tables(store: ResultsStore, suite: str | None = None) -> dict[str, pd.DataFrame]:
    """:data:`TABLES` of ``suite`` (``None``: every suite) as frames."""
    if suite is not None and suite not in (held := store.suites()):
        holds = ", ".join(held) or "no suite"
        raise ExportError(f"{store.path}: no suite {suite!r} in the store (it holds {holds})")
    return {
        "runs": flat_runs(store.runs(suite)),
        "metrics": store.metrics(suite),
        "timings": store.timings(suite),
        "diagnostics": store.diagnostics(suite),
    }


def check_format(fmt: str) -> None:
    """Fail on an unknown format, or on Parquet without pyarrow (naming what to install)."""
    if fmt not in FORMATS:
        raise ExportError(f"--format: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ExportError("--format parquet: needs pyarrow (pip install pyarrow), or use --format csv")


def export_store(
    store: ResultsStore, out_dir: str | Path, suite: str | None = None, fmt: str = "csv"
) -> list[Path]:
    """Write ``runs``, ``metrics``, ``timings`` and ``diagnostics`` files into ``out_dir``; return them."""
    check_format(fmt)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in store_tables(store, suite).items():
        path = out_dir / f"{name}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        written.append(path)
    logger.info("exported %s to %s", ", ".join(p.name for p in written), out_dir)
    return written
