"""Where datasets live, and the one error for data that is missing or corrupt.

Nothing is ever downloaded. A real-data task (``Task.needs_data``) gets the data root from, first to
last: ``run --data-root DIR``, the suite's task entry ``data_root:``, the environment variable
``GSB_DATA``. Where the data lives is not part of a run's identity (its config hash).
"""

from __future__ import annotations

import os
from pathlib import Path

from benchmark.errors import UserError

ENV_VAR = "GSB_DATA"


class DataError(UserError):
    """Missing or corrupt data. The message names the file (and line or record), says the expected
    layout and where the dataset is published; the CLI prints it and exits 2, before any training."""


def resolve_data_root(explicit: str | Path | None = None) -> Path | None:
    """``explicit`` if given, else ``$GSB_DATA``, else ``None`` (no data root configured)."""
    value = explicit if explicit not in (None, "") else os.environ.get(ENV_VAR) or None
    return None if value is None else Path(value).expanduser()


def require_root(data_root: Path | None, task: str) -> Path:
    """``data_root``, or a :class:`DataError` saying how to give one."""
    if data_root is None:
        raise DataError(
            f"task {task!r} reads a dataset from disk: give its folder with --data-root DIR, "
            f"'data_root:' in the suite's task entry, or ${ENV_VAR}"
        )
    if not data_root.is_dir():
        raise DataError(f"{data_root}: data root is not a folder")
    return data_root
