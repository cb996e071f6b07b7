"""Frozen, validated specifications of a run: what to train, how, and with which seed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
JACOBIAN_STRATEGIES = ("auto", "loop", "batched")


@dataclass(frozen=True)
class TrainSpec:
    """How one run trains. Tasks supply their own defaults (``Task.train_defaults``)."""

    steps: int = 1000
    batch_size: int | None = None
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0
    schedule: str = "constant"
    lr_step_size: int = 1000
    lr_gamma: float = 0.1
    warmup_steps: int = 0
    clip_grad_norm: float | None = None
    method_lr: float | None = None
    eval_every: int = 100
    level: str | None = None
    jacobian: str = "auto"
    device: str = "cpu"


@dataclass(frozen=True)
class PluginSpec:
    """A registered plugin (method or task) with its hyperparameters and a display label; a method may
    have a ``weighting`` applied before it (:class:`benchmark.method.Composed`)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    weighting: PluginSpec | None = None

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)


@dataclass(frozen=True)
class RunSpec:
    """One run: (task, method, seed, training settings) inside a suite.

    ``plugins`` (files to import before building the run) and ``data_root`` (where a real-data task
    reads its dataset) say where things are, not what is computed: they are not part of the run's
    identity (:meth:`config_hash`).
    """

    suite: str
    task: PluginSpec
    method: PluginSpec
    seed: int
    train: TrainSpec
    plugins: tuple[str, ...] = ()
    data_root: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def config_hash(self) -> str:
        """Stable hash of everything that determines the run's outcome."""
        payload = self.to_dict()
        payload.pop("plugins")
        payload.pop("data_root")
        for part in ("task", "method"):  # runs stored before composition existed keep their hash
            if payload[part]["weighting"] is None:
                del payload[part]["weighting"]
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def title(self) -> str:
        return f"{self.task.label} / {self.method.label} / seed {self.seed}"
