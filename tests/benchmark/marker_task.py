"""A test-only task that reads "data": the file ``marker`` under its data root, which
:meth:`MarkerTask.prepare` writes from ``raw.txt`` (the stand-in for converting a downloaded dataset)."""

from __future__ import annotations

from pathlib import Path

from benchmark.data import DataError, require_root
from benchmark.registry import TASKS
from tests.benchmark.linear_task import LinearTask

MARKER, RAW = "marker", "raw.txt"


@TASKS.register("_marker")
class MarkerTask(LinearTask):
    """The linear test task, built only when ``data_root/marker`` exists."""

    description = "test-only task that needs a data file"
    needs_data = True

    def __init__(self, data_root: Path | None, num_tasks: int = 2) -> None:
        marker = require_root(data_root, self.name) / MARKER
        if not marker.is_file():
            raise DataError(f"{marker}: missing; run: python run_all.py prepare {self.name}")
        super().__init__(num_tasks)

    @classmethod
    def data_status(cls, data_root: Path | None) -> str:
        if data_root is None:
            return "no data root given"
        marker = data_root / MARKER
        return f"{'present' if marker.is_file() else 'missing'}: {marker}"

    @classmethod
    def prepare(cls, data_root: Path, workers: int) -> None:
        raw = data_root / RAW
        if not raw.is_file():
            raise DataError(f"{raw}: missing; put the raw file there first")
        (data_root / MARKER).write_text(f"{raw.read_text()} prepared by {workers} workers")
