"""One run = (task, method, seed, training settings) -> metrics at each evaluation and step timings."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.specs import RunSpec

STATUSES = ("ok", "diverged", "failed")


@dataclass
class MetricRow:
    step: int
    split: str
    name: str
    value: float


@dataclass
class RunResult:
    """What one run produced. ``status`` is ``ok``, ``diverged`` (a non-finite loss) or ``failed``."""

    spec: RunSpec
    status: str
    metrics: list[MetricRow] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    started: float = 0.0
    ended: float = 0.0
