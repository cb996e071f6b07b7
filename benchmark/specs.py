"""Frozen specifications of a run (what to train, how, with which seed) and of what it reports.

The analysis side (:mod:`benchmark.evaluate`, :mod:`benchmark.report`) reads these and the store only:
never the trainer, and never a task it would have to build (CelebA's would load the data).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = ("ok", "diverged", "failed")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
JACOBIAN_STRATEGIES = ("auto", "loop", "batched")
OPTIMIZER_IMPLS = ("default", "foreach", "fused")
AMP_MODES = (None, "bf16", "fp16")
FUSED_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu", "hpu")
"""Device types with fused SGD/Adam/AdamW kernels in the pinned torch
(``torch.utils._foreach_utils._get_fused_kernels_supported_devices``)."""


@dataclass(frozen=True)
class Metric:
    """A reported metric, its direction and, where it has one, its range (``low``/``high``, ``None``:
    unbounded), to which plotted intervals are clipped."""

    name: str
    higher_is_better: bool
    description: str = ""
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class TaskInfo:
    """What evaluating a run needs to know of its task, stored with the run.

    Attributes:
        metrics: the declared metrics with their directions (``()``: unknown, values shown bare).
        eval_splits: the splits the task evaluates on.
        selection_metric: the validation metric of model selection (``None``: the mean of the
            higher-is-better metrics).
        deterministic: the task and the method are both deterministic: the seed cannot change the
            result, so the run stands for every seed of its suite.
        landscape: the task has a 2-D landscape to draw trajectories on (the report builds it).
        task_names: the names of the task's losses, in loss order: a metric named
            ``<stat>/<task name>`` belongs to that loss (:func:`benchmark.evaluate.metric_task`).
    """

    metrics: tuple[Metric, ...] = ()
    eval_splits: tuple[str, ...] = ()
    selection_metric: str | None = None
    deterministic: bool = False
    landscape: bool = False
    task_names: tuple[str, ...] = ()

    @property
    def directions(self) -> dict[str, bool]:
        """Metric name -> ``higher_is_better``."""
        return {m.name: m.higher_is_better for m in self.metrics}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskInfo:
        metrics = tuple(Metric(**m) for m in data.get("metrics", ()))
        tuples = {key: tuple(data.get(key, ())) for key in ("eval_splits", "task_names")}
        return cls(**{**data, "metrics": metrics, **tuples})


NOT_IDENTITY = {"identity": False}
"""Metadata of a TrainSpec field that says where or how a run executes, not what it computes (the
device): such fields stay out of :meth:`RunSpec.config_hash`."""


@dataclass(frozen=True)
class TrainSpec:
    """How one run trains. Tasks supply their own defaults (``Task.train_defaults``).

    Settings that change results in the last bits and so stay off by default (the shipped suites'
    results are recorded without them): ``batched_heads`` (a task's ``LinearHead`` s as one module,
    equal to separate heads to float tolerance), ``optimizer_impl`` (torch's ``foreach`` or ``fused``
    kernels instead of its default, another order of floating-point operations), ``factored_heads``
    (at the feature level, the per-task gradients at z kept as the linear heads' factors,
    :mod:`benchmark.factored`: equal to the dense ones to rounding; no effect at the param level or
    for loss weightings) and ``amp`` (the trunk's forward and backward in bfloat16 or float16,
    :mod:`benchmark.amp`).

    ``diagnostics_every``: log :mod:`benchmark.diagnostics` every that many steps (0: never).

    ``checkpoint_every``: steps between a run's checkpoints (:mod:`benchmark.checkpoint`); ``None``
    (default) checkpoints at an evaluation once 30 s have passed since the run started or last
    checkpointed, ``0`` never. Like ``device`` it does not change what a run computes.
    """

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
    batched_heads: bool = False
    optimizer_impl: str = "default"
    factored_heads: bool = False
    amp: str | None = None
    diagnostics_every: int = 0
    device: str = field(default="cpu", metadata=NOT_IDENTITY)
    checkpoint_every: int | None = field(default=None, metadata=NOT_IDENTITY)
    distributed: int = field(default=1, metadata=NOT_IDENTITY)
    """Processes that train the run data-parallel (:mod:`benchmark.distributed`). Not part of a run's
    identity: every method sees the whole batch's gradients, so the results equal the one-process
    run's up to float rounding (summation order), as on another device."""


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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PluginSpec:
        weighting = data.get("weighting")
        return cls(
            data["name"], dict(data.get("params", {})), data.get("label", ""),
            None if weighting is None else cls.from_dict(weighting),
        )


@dataclass(frozen=True)
class RunSpec:
    """One run: (task, method, seed, training settings) inside a suite.

    ``plugins`` (files to import before building the run), ``data_root`` (where a real-data task
    reads its dataset) and ``resources`` (what an executor reserves for the run: ``num_cpus``,
    ``num_gpus``) say where and how, not what is computed: they are not part of the run's identity
    (:meth:`config_hash`); ``plugin_versions``, the plugins' code versions (a hash of each file's
    contents), are.
    """

    suite: str
    task: PluginSpec
    method: PluginSpec
    seed: int
    train: TrainSpec
    plugins: tuple[str, ...] = ()
    data_root: str | None = None
    plugin_versions: tuple[str, ...] = ()
    resources: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        """The spec of :meth:`to_dict` (as stored); training settings unknown to this version are
        dropped, missing ones take their defaults."""
        fields = {f.name for f in dataclasses.fields(TrainSpec)}
        train = TrainSpec(**{k: v for k, v in data["train"].items() if k in fields})
        return cls(
            data["suite"], PluginSpec.from_dict(data["task"]), PluginSpec.from_dict(data["method"]),
            int(data["seed"]), train, tuple(data.get("plugins", ())), data.get("data_root"),
            tuple(data.get("plugin_versions", ())), dict(data.get("resources", {})),
        )

    def config_hash(self) -> str:
        """Stable hash of everything that determines the run's outcome: not where its plugins and
        data are, nor how it executes (fields marked :data:`NOT_IDENTITY`, such as the device).

        Training settings enter only where they differ from their defaults, so that a setting added
        later (with a default that keeps today's behaviour) leaves every stored run's hash as it was.
        """
        payload = self.to_dict()
        for key in ("plugins", "data_root", "resources"):
            payload.pop(key)
        if not payload["plugin_versions"]:
            payload.pop("plugin_versions")
        payload["train"] = {
            f.name: payload["train"][f.name]
            for f in dataclasses.fields(TrainSpec)
            if f.metadata.get("identity", True) and payload["train"][f.name] != f.default
        }
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def title(self) -> str:
        return f"{self.task.label} / {self.method.label} / seed {self.seed}"
