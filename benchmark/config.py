"""YAML suite -> validated, frozen run specs. Every error names the file, the key path and the bad value.

A suite file::

    name: quick                       # default: the file's stem
    seeds: [0, 1, 2]                  # or a count: 3 -> 0, 1, 2
    plugins: [my_methods.py]          # optional, relative to the suite file
    train: {steps: 500}               # TrainSpec overrides for every run
    resources: {num_cpus: 1}          # what the Ray executor reserves per run (also per entry)
    tasks:
      - name: toy2d
        params: {variant: nashmtl}
        grid: {start: [0, 1, 2, 3, 4]}  # instances of one task, pooled under one label
        train: {eval_every: 250}
    methods:
      - ew
      - {name: graddrop, label: random_graddrop, params: {k: 0.0}}
      - {name: graddrop, grid: {leak: [0.0, 0.5]}}  # one labelled method per value
      - {name: graddrop, weighting: gradnorm}        # a weighting applied first: "gradnorm+graddrop"
      - stl                                          # Method.default_grid: one run per task
      - {name: pcgrad, tune: {lr: [0.001, 0.01]}}     # runs "pcgrad[lr=0.001]", ...; the report
                                                     # keeps the validation-best per task label
      - {name: fixed, tune: {weights: {grid: 4}}}    # or {draws: N}: weight vectors to try
    baseline: ew                      # the reference of the report's tests (default: ew)
    claims:                           # checked by the report: supported / not supported / inconclusive
      - {better: graddrop, than: all, metric: f1, task: digits}
    published:                        # numbers copied from a cited source, shown beside ours
      - {method: ew, task: digits, metric: f1, value: 0.9,
         source: {paper: "...", table: "2", row: "EW"}}

Training settings are merged, later winning: ``TrainSpec`` defaults, the task's ``train_defaults``,
the suite's ``train``, the task entry's ``train``, the method entry's ``train``, the command line's
overrides. ``resources`` (``num_cpus``, ``num_gpus``: numbers >= 0) merge the same way, without the
command line. Each mapping is checked where it is written, so an error names that place
(``tasks[1].train.lr``, ``--device``). A float setting also accepts a string that parses as a float:
YAML 1.1 reads ``1e-3`` (no dot) as a string, and it is the number the user meant.

A task that reads a dataset (``Task.needs_data``) gets its data root from ``run --data-root``, else
the task entry's ``data_root:`` (relative to the suite file), else ``$GSB_DATA``
(:func:`benchmark.data.resolve_data_root`); every task is built once here, so missing data fails
before anything trains.

The file is read with a ``yaml.SafeLoader`` (no objects built from tags) that refuses a key given
twice in one mapping, and must be UTF-8.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import itertools
import math
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Union, get_args, get_origin, get_type_hints

import numpy as np
import torch
import yaml

from benchmark.data import resolve_data_root
from benchmark.errors import UserError
from benchmark.evaluate import ALL, BASELINE, Claim, Published, ReportSettings, tune_parts
from benchmark.method import Method, WeightedMethod, build_method
from benchmark.registry import METHODS, TASKS, PluginError, Registry, UnknownNameError, load_plugin
from benchmark.specs import (
    AMP_MODES,
    FUSED_DEVICE_TYPES,
    JACOBIAN_STRATEGIES,
    OPTIMIZER_IMPLS,
    OPTIMIZERS,
    SCHEDULES,
    PluginSpec,
    RunSpec,
    TrainSpec,
)
from benchmark.task import Task, get_task

SUITE_KEYS = (
    "name", "description", "seeds", "plugins", "train", "diagnostics", "resources", "tasks", "methods",
    "baseline", "claims", "published",
)
DIAGNOSTICS_KEYS = ("every",)
ENTRY_KEYS = ("name", "label", "params", "grid", "train", "resources")
RESOURCE_KEYS = ("num_cpus", "num_gpus")
TASK_KEYS = (*ENTRY_KEYS, "data_root")
METHOD_KEYS = (*ENTRY_KEYS, "weighting", "tune")
CLAIM_KEYS = ("better", "than", "metric", "task")
PUBLISHED_KEYS = ("method", "task", "metric", "value", "source")
SOURCE_KEYS = ("paper", "table", "row")
WEIGHT_SEARCHES = ("grid", "draws")
WEIGHT_GRID_MAX_TASKS = 3
WEIGHT_DRAWS_SEED = 0
SUITE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a folder name under reports/, never a path
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainSpec))
TRAIN_TYPES = get_type_hints(TrainSpec)
TRAIN_CHOICES = {
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "jacobian": JACOBIAN_STRATEGIES,
    "level": ("param", "feature", None),
    "optimizer_impl": OPTIMIZER_IMPLS,
    "amp": AMP_MODES,
}
# Lower bound of each numeric setting and whether the bound itself is allowed; numbers must be finite.
TRAIN_BOUNDS = {
    "steps": (1, True),
    "batch_size": (1, True),
    "lr": (0, False),
    "weight_decay": (0, True),
    "momentum": (0, True),
    "lr_step_size": (1, True),
    "lr_gamma": (0, False),
    "warmup_steps": (0, True),
    "clip_grad_norm": (0, False),
    "method_lr": (0, False),
    "eval_every": (1, True),
    "diagnostics_every": (0, True),
    "checkpoint_every": (0, True),
    "distributed": (1, True),
}


class ConfigError(UserError):
    """A suite file that cannot be run; the message starts with ``file: key.path:``."""


Fail = Callable[[str, str], NoReturn]


def _failer(where: str) -> Fail:
    def fail(key: str, message: str) -> NoReturn:
        raise ConfigError(f"{where}: {key + ': ' if key else ''}{message}")

    return fail


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    path: Path | None
    runs: tuple[RunSpec, ...]
    settings: ReportSettings = field(default_factory=ReportSettings)


def load_suite(
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    data_root: str | Path | None = None,
    plugins: Sequence[str | Path] = (),
    seeds: int | None = None,
) -> Suite:
    """Read and validate a suite file; ``overrides`` are TrainSpec settings from the command line that
    win over the file, ``data_root`` the command line's ``--data-root``, ``plugins`` its ``--plugin``
    files (added to the suite's ``plugins``), ``seeds`` its ``--seeds`` (the first that many seeds of
    the suite's, for a quick check)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: suite file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from err
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: no objects from tags
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(err)}") from err
    suite = parse_suite(raw, source=path, overrides=overrides, data_root=data_root, plugins=plugins)
    if seeds is None:
        return suite
    kept = sorted({run.seed for run in suite.runs})[:seeds]
    return dataclasses.replace(suite, runs=tuple(run for run in suite.runs if run.seed in kept))


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML 1.2, section 3.2.1.1,
    requires unique keys; PyYAML silently keeps the last value)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *base" may repeat and be overridden by design
            key = self.construct_object(key_node, deep=deep)
            try:
                first = first_line.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (first on line {first})", key_node.start_mark
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """``line L, column C: problem`` of a PyYAML error, or its text when it has no position."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    if mark is None or problem is None:
        return str(err)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


@dataclass(frozen=True)
class _Shared:
    """What every run of a suite shares: its name, seeds and plugins, the suite's checked ``train``,
    the command line's checked overrides and data root, and where the suite file lives."""

    name: str
    seeds: tuple[int, ...]
    plugins: tuple[str, ...]
    versions: tuple[str, ...]
    train: Mapping[str, Any]
    resources: Mapping[str, float]
    overrides: Mapping[str, Any]
    data_root: Path | None
    folder: Path
    fail: Fail

    def where(self, data_root: str | None) -> tuple[tuple[str, ...], str | None, tuple[str, ...]]:
        """``RunSpec``'s plugins, data root and plugin versions."""
        return self.plugins, data_root, self.versions


def parse_suite(
    raw: Any,
    source: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    data_root: str | Path | None = None,
    plugins: Sequence[str | Path] = (),
) -> Suite:
    """Validate a suite already read from YAML (a mapping); the other arguments as in
    :func:`load_suite`."""
    where = str(source) if source else "<suite>"
    fail = _failer(where)
    suite = _mapping(raw, "", fail)
    _check_keys(suite, SUITE_KEYS, "", fail)
    for key in ("tasks", "methods"):
        if not suite.get(key):
            fail(key, f"a suite needs at least one entry under {key!r}")
    shared = _Shared(
        name=_suite_name(suite.get("name"), source, fail),
        seeds=_seeds(suite.get("seeds", [0]), fail),
        plugins=(all_plugins := _all_plugins(plugins, suite.get("plugins", []), source, fail)),
        versions=tuple(file_version(p) for p in all_plugins),
        train={
            **_train_fields(suite.get("train", {}), "train", fail),
            **_diagnostics(suite.get("diagnostics", {}), fail),
        },
        resources=_resources(suite.get("resources", {}), "resources", fail),
        overrides=_train_fields(overrides or {}, "", _failer("command line"), _flag),
        data_root=None if data_root is None else Path(data_root),
        folder=source.parent if source else Path(),
        fail=fail,
    )
    methods = [
        _with_train(*_method_entry(m, f"methods[{i}]", fail), fail)
        for i, m in enumerate(_list(suite["methods"], "methods", fail))
    ]
    tasks = [
        _with_train(*_entry(t, f"tasks[{i}]", TASKS, TASK_KEYS, fail), fail)
        for i, t in enumerate(_list(suite["tasks"], "tasks", fail))
    ]
    _check_unique_labels(tasks, fail)
    declared: dict[str, set[str]] = {}
    runs = [run for key, entry in tasks for run in _task_runs(shared, key, entry, methods, declared)]
    settings = _report_settings(suite, runs, declared, fail)
    return Suite(shared.name, str(suite.get("description", "")), source, tuple(runs), settings)


def check_train_settings(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    """TrainSpec ``settings`` given outside a suite file, checked and coerced as a suite's ``train`` is;
    each error starts with ``where`` (the option that gave them, say) and names the key."""
    return _train_fields(settings, "", _failer(where), str)


def check_execution(train: TrainSpec, task: Task, where: str, key: str) -> None:
    """Settings valid alone but not with ``task`` or the device, as for a suite's runs (``key``: the
    task, in messages after ``where``)."""
    _check_execution(train, task, key, _failer(where))


def _task_runs(
    shared: _Shared,
    key: str,
    entry: Mapping[str, Any],
    methods: list[tuple[str, dict[str, Any]]],
    declared: dict[str, set[str]],
) -> list[RunSpec]:
    """Every run of one task entry: its grid instances x the methods (each with its grid and tuning
    configurations, :func:`_tune_configs`) x the seeds. ``declared`` gets the task label's metrics.

    A deterministic task with a deterministic method (``deterministic`` on both classes) cannot give
    another result with another seed: it is run with the suite's first seed only, and its stored
    ``info`` says it stands for every seed.
    """
    fail = shared.fail
    data_root = _data_root(shared, key, entry)
    runs = []
    for task_spec in _expand(entry, relabel=False):
        task = _construct_task(task_spec, data_root, key, fail)
        declared.setdefault(task_spec.label, set()).update(m.name for m in task.metrics())
        defaults = _train_fields(dict(task.train_defaults), f"{key}: task {task.name!r} train_defaults", fail)
        labels: dict[str, str] = {}
        for m_key, method_entry in methods:
            expanded = _expand(method_entry, relabel=True, num_tasks=task.num_tasks)
            for method_spec, tuned_train in _tuned(expanded, method_entry, task.num_tasks, m_key, fail):
                _claim_label(method_spec.label, m_key, labels, fail)
                method = _construct_method(method_spec, task.num_tasks, m_key, fail)
                merged = {**defaults, **shared.train, **entry["train"], **method_entry["train"]}
                merged.update(tuned_train)
                train = TrainSpec(**{**merged, **shared.overrides})
                _check_level(method, train.level or method.level, m_key, fail)
                _check_execution(train, task, key, fail)
                _check_distributed(train, m_key, fail)
                root = None if data_root is None else str(data_root)
                seeds = shared.seeds[:1] if task.deterministic and method.deterministic else shared.seeds
                resources = {**shared.resources, **entry["resources"], **method_entry["resources"]}
                runs += [
                    RunSpec(shared.name, task_spec, method_spec, s, train, *shared.where(root), resources)
                    for s in seeds
                ]
    return runs


def _with_train(key: str, entry: dict[str, Any], fail: Fail) -> tuple[str, dict[str, Any]]:
    """The entry with its ``train`` and ``resources`` mappings checked where they are written."""
    train = _train_fields(entry.get("train", {}), f"{key}.train", fail)
    return key, {**entry, "train": train, "resources": _resources(entry.get("resources", {}), key, fail)}


def _resources(raw: Any, key: str, fail: Fail) -> dict[str, float]:
    """A ``resources`` mapping (``key`` is where it is written): known keys, numbers >= 0."""
    key = key if key == "resources" else f"{key}.resources"
    values = _mapping(raw, key, fail)
    _check_keys(values, RESOURCE_KEYS, key, fail)
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
            fail(f"{key}.{name}", f"expected a number >= 0, got {value!r}")
    return {name: float(value) for name, value in values.items()}


def _data_root(shared: _Shared, key: str, entry: Mapping[str, Any]) -> Path | None:
    """The folder the entry's task reads its data from (``None`` for tasks without data files)."""
    needs_data = TASKS.get(entry["name"]).needs_data
    written = None
    if "data_root" in entry:
        value = entry["data_root"]
        if not needs_data:
            shared.fail(f"{key}.data_root", f"task {entry['name']!r} reads no data files; remove the key")
        if not isinstance(value, str) or not value:
            shared.fail(f"{key}.data_root", f"expected a folder path, got {value!r}")
        written = shared.folder / Path(value).expanduser()
    if not needs_data:
        return None
    root = resolve_data_root(shared.data_root if shared.data_root is not None else written)
    return None if root is None else root.absolute()


def _diagnostics(raw: Any, fail: Fail) -> dict[str, Any]:
    """The suite's ``diagnostics: {every: N}`` as the training setting ``diagnostics_every``."""
    entry = _mapping(raw, "diagnostics", fail)
    _check_keys(entry, DIAGNOSTICS_KEYS, "diagnostics", fail)
    if "every" not in entry:
        return {}
    every = _coerce(entry["every"], int, "diagnostics.every", fail)
    _check_train_value("diagnostics_every", every, "diagnostics.every", fail)
    return {"diagnostics_every": every}


def _mapping(value: Any, key: str, fail: Fail) -> dict[str, Any]:
    if not isinstance(value, dict):
        fail(key, f"expected a mapping, got {value!r}")
    return value


def _list(value: Any, key: str, fail: Fail) -> list[Any]:
    if not isinstance(value, list):
        fail(key, f"expected a list, got {value!r}")
    return value


def _check_keys(
    mapping: Mapping[str, Any], allowed: tuple[str, ...], key: str, fail: Fail, what: str = "key"
) -> None:
    """Fail on the first key of ``mapping`` not in ``allowed``, suggesting the closest one."""
    for k in mapping:
        if k not in allowed:
            fail(f"{key}.{k}" if key else str(k), f"unknown {what}{_hint(str(k), allowed)}")


def _hint(name: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f"; expected one of {', '.join(allowed)}"


def _suite_name(value: Any, source: Path | None, fail: Fail) -> str:
    """The suite's ``name`` (default: the file's stem): a folder name under ``reports/``."""
    name = value if value is not None else (source.stem if source else "suite")
    if not isinstance(name, str) or not SUITE_NAME.fullmatch(name):
        written = "" if value is not None else " (the file's name)"
        rule = "expected letters, digits, '_', '.' or '-' (it names the report folder)"
        fail("name", f"{rule}, got {name!r}{written}")
    return name


def _seeds(value: Any, fail: Fail) -> tuple[int, ...]:
    if _is_int(value) and value > 0:
        return tuple(range(value))
    if not isinstance(value, list) or not value or not all(_is_int(s) and s >= 0 for s in value):
        fail("seeds", f"expected a positive count or a list of integers >= 0, got {value!r}")
    _check_distinct(value, "seeds", "seed", fail)
    return tuple(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_distinct(values: list[Any], key: str, what: str, fail: Fail) -> None:
    """Fail on the first value equal to an earlier one: each would give the same runs, stored once."""
    for i, value in enumerate(values):
        if value in values[:i]:
            fail(key, f"{what} {value!r} appears twice")


def file_version(path: str | Path) -> str:
    """The code version of a plugin file: the start of its contents' SHA-256."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _all_plugins(
    command_line: Sequence[str | Path], value: Any, source: Path | None, fail: Fail
) -> tuple[str, ...]:
    """The command line's plugin files, then the suite's ``plugins`` (relative to the suite file), each
    loaded once here and carried by every run, so that every worker loads them too."""
    paths = [load_plugin(p) for p in command_line]
    for i, item in enumerate(_list(value, "plugins", fail)):
        path = Path(str(item))
        if not path.is_absolute() and source is not None:
            path = source.parent / path
        if not path.is_file():
            fail(f"plugins[{i}]", f"plugin file not found: {path}")
        try:
            paths.append(load_plugin(path))
        except PluginError as err:
            fail(f"plugins[{i}]", str(err))
    return tuple(dict.fromkeys(paths))


def _entry(
    raw: Any, key: str, registry: Registry[type], allowed: tuple[str, ...], fail: Fail
) -> tuple[str, dict[str, Any]]:
    """A task or method entry as a dict with a known ``name``; a bare string is ``{name: ...}``."""
    entry = {"name": raw} if isinstance(raw, str) else _mapping(raw, key, fail)
    _check_keys(entry, allowed, key, fail)
    if "name" not in entry:
        fail(key, "missing 'name'")
    try:
        cls = registry.get(entry["name"])
    except UnknownNameError as err:
        fail(f"{key}.name", str(err))
    for part in ("params", "grid", "train"):
        _mapping(entry.get(part, {}), f"{key}.{part}", fail)
    if not _takes_kwargs(cls):
        what = f"parameter of {registry.kind} {entry['name']!r}"
        for part in ("params", "grid"):
            _check_keys(entry.get(part, {}), tuple(cls.defaults()), f"{key}.{part}", fail, what)
    for name, values in entry.get("grid", {}).items():
        if not isinstance(values, list) or not values:
            fail(f"{key}.grid.{name}", f"expected a non-empty list of values, got {values!r}")
        _check_distinct(values, f"{key}.grid.{name}", "value", fail)
        if name in entry.get("params", {}):
            fail(f"{key}.grid.{name}", "also set in params; give it in one place")
    return key, entry


def _method_entry(raw: Any, key: str, fail: Fail) -> tuple[str, dict[str, Any]]:
    """A method entry; its optional ``weighting`` (a name or ``{name, params}``) is checked to be a
    method with task weights and stored as a PluginSpec."""
    key, entry = _entry(raw, key, METHODS, METHOD_KEYS, fail)
    if "[" in str(entry.get("label", "")):
        fail(f"{key}.label", f"'[' marks tuning configurations in labels, got {entry['label']!r}")
    _check_tune(entry, key, fail)
    if "weighting" not in entry:
        return key, entry
    w_key = f"{key}.weighting"
    _, weighting = _entry(entry["weighting"], w_key, METHODS, ("name", "params"), fail)
    if not issubclass(METHODS.get(weighting["name"]), WeightedMethod):
        weightings = ", ".join(n for n in METHODS.names() if issubclass(METHODS.get(n), WeightedMethod))
        fail(f"{w_key}.name", f"{weighting['name']!r} gives no task weights; weightings: {weightings}")
    spec = PluginSpec(weighting["name"], dict(weighting.get("params", {})))
    return key, {**entry, "weighting": spec}


def _check_tune(entry: Mapping[str, Any], key: str, fail: Fail) -> None:
    """An entry's ``tune``: training settings or method parameters, each a non-empty list of distinct
    values set nowhere else in the entry; ``weights`` may be ``{grid: N}`` or ``{draws: N}``."""
    tune = _mapping(entry.get("tune", {}), f"{key}.tune", fail)
    cls = METHODS.get(entry["name"])
    params = tuple(cls.defaults())
    for name, values in tune.items():
        where = f"{key}.tune.{name}"
        if name not in TRAIN_FIELDS and name not in params and not _takes_kwargs(cls):
            known = f"{_hint(name, (*TRAIN_FIELDS, *params))}"
            fail(where, f"not a training setting nor a parameter of method {entry['name']!r}{known}")
        if any(name in entry.get(part, {}) for part in ("params", "grid", "train")):
            fail(where, "also set in params, grid or train; give it in one place")
        if name == "weights" and isinstance(values, dict):
            _check_weight_search(values, where, fail)
            continue
        if not isinstance(values, list) or not values:
            fail(where, f"expected a non-empty list of values, got {values!r}")
        _check_distinct(values, where, "value", fail)
        if name in TRAIN_FIELDS:
            for i, value in enumerate(values):
                item = f"{where}[{i}]"
                _check_train_value(name, _coerce(value, TRAIN_TYPES[name], item, fail), item, fail)


def _check_weight_search(search: Mapping[str, Any], key: str, fail: Fail) -> None:
    if len(search) != 1 or next(iter(search)) not in WEIGHT_SEARCHES:
        fail(key, f"expected {{grid: N}} or {{draws: N}}, got {dict(search)!r}")
    (kind, count), = search.items()
    if not _is_int(count) or count < 1:
        fail(f"{key}.{kind}", f"expected a positive integer, got {count!r}")


def weight_vectors(search: Mapping[str, int], num_tasks: int) -> list[tuple[str, list[float]]]:
    """The weight vectors of a tuned ``fixed`` baseline, with their labels, scaled to sum to T (as
    equal weighting's ones, so that learning rates stay comparable).

    ``{grid: N}``: the simplex lattice of step 1/N with every weight positive (Σ kᵢ = N, kᵢ ≥ 1; for
    T ≤ 3). ``{draws: N}``: N draws from the flat Dirichlet distribution (``numpy``, seed 0), each
    labelled by its index; the weights are in the run's parameters.
    """
    (kind, count), = search.items()
    if kind == "grid":
        if num_tasks > WEIGHT_GRID_MAX_TASKS:
            limit = WEIGHT_GRID_MAX_TASKS
            raise ValueError(f"a weight grid needs T <= {limit}, got T = {num_tasks}; use draws")
        ticks = itertools.product(range(1, count + 1), repeat=num_tasks)
        points = [[num_tasks * k / count for k in combo] for combo in ticks if sum(combo) == count]
        return [("(" + ", ".join(f"{w:g}" for w in p) + ")", p) for p in points]
    rng = np.random.default_rng(WEIGHT_DRAWS_SEED)
    draws = rng.dirichlet(np.ones(num_tasks), size=count) * num_tasks
    return [(f"draw {i}", [float(w) for w in draw]) for i, draw in enumerate(draws)]


def _tuned(
    specs: list[PluginSpec], entry: Mapping[str, Any], num_tasks: int, key: str, fail: Fail
) -> list[tuple[PluginSpec, dict[str, Any]]]:
    """Each spec once per combination of the entry's ``tune`` values (every one runs on every seed),
    labelled ``label[k=v, ...]``, with the combination's training settings."""
    tune = entry.get("tune", {})
    if not tune:
        return [(spec, {}) for spec in specs]
    axes = []
    for name, values in tune.items():
        if name == "weights" and isinstance(values, dict):
            try:
                axes.append([(name, label, w) for label, w in weight_vectors(values, num_tasks)])
            except ValueError as err:
                fail(f"{key}.tune.weights", str(err))
        else:
            typed = TRAIN_TYPES.get(name)
            values = [v if typed is None else _coerce(v, typed, key, fail) for v in values]
            axes.append([(name, str(v), v) for v in values])
    tuned = []
    for spec in specs:
        for combo in itertools.product(*axes):
            label = f"{spec.label}[" + ", ".join(f"{n}={text}" for n, text, _ in combo) + "]"
            params = {**spec.params, **{n: v for n, _, v in combo if n not in TRAIN_FIELDS}}
            train = {n: v for n, _, v in combo if n in TRAIN_FIELDS}
            tuned.append((PluginSpec(spec.name, params, label, spec.weighting), train))
    return tuned


def _report_settings(
    suite: Mapping[str, Any], runs: list[RunSpec], declared: Mapping[str, set[str]], fail: Fail
) -> ReportSettings:
    """The suite's ``baseline``, ``claims`` and ``published``, checked against its labels and metrics."""
    methods = list(dict.fromkeys(tune_parts(run.method.label)[0] for run in runs))
    baseline = suite.get("baseline", BASELINE)
    if "baseline" in suite and baseline not in methods:
        hint = _hint(str(baseline), tuple(methods))
        fail("baseline", f"{baseline!r} is not a method label of the suite{hint}")
    claims = tuple(
        _claim(raw, f"claims[{i}]", methods, declared, fail)
        for i, raw in enumerate(_list(suite.get("claims", []), "claims", fail))
    )
    published = tuple(
        _published(raw, f"published[{i}]", methods, declared, fail)
        for i, raw in enumerate(_list(suite.get("published", []), "published", fail))
    )
    return ReportSettings(baseline, claims, published)


def _known(value: Any, allowed: Sequence[str], key: str, what: str, fail: Fail) -> str:
    if not isinstance(value, str) or value not in allowed:
        fail(key, f"unknown {what} {value!r}{_hint(str(value), tuple(allowed))}")
    return value


def _task_and_metric(
    entry: Mapping[str, Any], key: str, declared: Mapping[str, set[str]], fail: Fail, needs_task: bool
) -> tuple[str | None, str]:
    """A claim's or published number's task label (optional for claims) and a metric it declares."""
    task = entry.get("task")
    if task is not None or needs_task:
        _known(task, tuple(declared), f"{key}.task", "task label", fail)
    metrics = declared[task] if task is not None else set().union(*declared.values())
    return task, _known(entry.get("metric"), tuple(sorted(metrics)), f"{key}.metric", "metric", fail)


def _claim(
    raw: Any, key: str, methods: list[str], declared: Mapping[str, set[str]], fail: Fail
) -> Claim:
    entry = _mapping(raw, key, fail)
    _check_keys(entry, CLAIM_KEYS, key, fail)
    better = _known(entry.get("better"), methods, f"{key}.better", "method label", fail)
    than = entry.get("than")
    if than != ALL:
        listed = than if isinstance(than, list) else [than]
        if not listed:
            fail(f"{key}.than", "expected a method label, a list of them or 'all', got []")
        than = tuple(_known(m, methods, f"{key}.than", "method label", fail) for m in listed)
        if better in than:
            fail(f"{key}.than", f"{better!r} cannot be better than itself")
    task, metric = _task_and_metric(entry, key, declared, fail, needs_task=False)
    return Claim(better, than, metric, task)


def _published(
    raw: Any, key: str, methods: list[str], declared: Mapping[str, set[str]], fail: Fail
) -> Published:
    entry = _mapping(raw, key, fail)
    _check_keys(entry, PUBLISHED_KEYS, key, fail)
    method = _known(entry.get("method"), methods, f"{key}.method", "method label", fail)
    task, metric = _task_and_metric(entry, key, declared, fail, needs_task=True)
    value = entry.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        fail(f"{key}.value", f"expected a finite number, got {value!r}")
    source = _mapping(entry.get("source"), f"{key}.source", fail)
    _check_keys(source, SOURCE_KEYS, f"{key}.source", fail)
    for part in SOURCE_KEYS:
        if not isinstance(source.get(part), str | int) or not str(source.get(part)).strip():
            fail(f"{key}.source.{part}", f"the source's {part} is required, got {source.get(part)!r}")
    return Published(method, str(task), metric, float(value), *(str(source[p]) for p in SOURCE_KEYS))


def _takes_kwargs(cls: type) -> bool:
    params = inspect.signature(cls.__init__).parameters.values()
    return any(p.kind is p.VAR_KEYWORD for p in params)


def _expand(entry: Mapping[str, Any], relabel: bool, num_tasks: int | None = None) -> list[PluginSpec]:
    """One spec per combination of the entry's grid; with ``relabel``, a label per combination.

    For a method (``num_tasks`` given) the grid starts from ``Method.default_grid`` for the keys the
    entry sets neither in ``params`` nor in ``grid``.
    """
    params = entry.get("params", {})
    grid = dict(entry.get("grid", {}))
    if num_tasks is not None:
        defaults = METHODS.get(entry["name"]).default_grid(num_tasks)
        grid = {**{k: v for k, v in defaults.items() if k not in params}, **grid}
    base_label = _label(entry)
    specs = []
    for values in itertools.product(*grid.values()):
        combo = dict(zip(grid, values, strict=True))
        label = base_label
        if relabel and combo:
            label += "(" + ", ".join(f"{k}={v}" for k, v in combo.items()) + ")"
        specs.append(PluginSpec(entry["name"], {**params, **combo}, str(label), entry.get("weighting")))
    return specs


def _label(entry: Mapping[str, Any]) -> str:
    """The entry's label; by default its name, prefixed by its weighting's (``gradnorm+graddrop``)."""
    weighting = entry.get("weighting")
    return str(entry.get("label") or (f"{weighting.name}+" if weighting else "") + entry["name"])


def _construct_task(spec: PluginSpec, data_root: Path | None, key: str, fail: Fail) -> Task:
    """Build the task once so that a bad hyperparameter value or missing data fails here, not mid-sweep."""
    try:
        return get_task(spec.name, data_root, **spec.params)
    except Exception as err:  # any constructor error (bad value, missing data) is a config error here
        fail(key, f"task {spec.name!r} with {spec.params}: {err}")


def _construct_method(spec: PluginSpec, num_tasks: int, key: str, fail: Fail) -> Method:
    """Build the method (composed with its weighting) once, so a bad value fails here."""
    try:
        return build_method(spec, num_tasks)
    except Exception as err:
        what = f"{spec.weighting.name!r} + " if spec.weighting else ""
        fail(key, f"method {what}{spec.name!r} with {spec.params}: {err}")


def _check_level(method: Method, level: str, key: str, fail: Fail) -> None:
    """A method's hyperparameters may be undefined at one level (GradDrop's batch marginalisation
    needs the batch dimension of the feature level): fail here, not at the first step."""
    try:
        method.check_level(level)
    except ValueError as err:
        fail(f"{key}.train.level", f"{level!r}: {err}")


def _check_execution(train: TrainSpec, task: Task, key: str, fail: Fail) -> None:
    """Settings valid alone but not together with the task or device: fail here, not at the first step."""
    for setting in ("batched_heads", "factored_heads"):
        if getattr(train, setting) and not task.linear_heads:
            fail(f"{key}.train.{setting}", f"true, but task {task.name!r} does not declare linear_heads")
    device_type = torch.device(train.device).type
    if train.optimizer_impl == "fused" and device_type not in FUSED_DEVICE_TYPES:
        fail(f"{key}.train.optimizer_impl", f"'fused' has no kernels on device {train.device!r}")
def _check_distributed(train: TrainSpec, key: str, fail: Fail) -> None:
    """Data-parallel processes take equal shards of every batch: the batch size must divide by them
    (``None``, the whole split or a task without data rows, cannot be checked and is refused)."""
    if train.distributed > 1 and (train.batch_size is None or train.batch_size % train.distributed):
        fail(
            f"{key}.train.distributed",
            f"{train.distributed} processes need a batch_size that divides by {train.distributed}, "
            f"got batch_size {train.batch_size}",
        )


def _check_unique_labels(entries: list[tuple[str, dict[str, Any]]], fail: Fail) -> None:
    """Task entries with one label would be pooled in one report row (a task grid is, by design)."""
    labels: dict[str, str] = {}
    for key, entry in entries:
        _claim_label(_label(entry), key, labels, fail)


def _claim_label(label: str, key: str, labels: dict[str, str], fail: Fail) -> None:
    """Record that entry ``key`` makes runs labelled ``label``; fail if another entry does too."""
    owner = labels.setdefault(label, key)
    if owner != key:
        fail(f"{key}.label", f"label {label!r} is already used by {owner}; give one a 'label'")


def _flag(name: str) -> str:
    """The command-line option that overrides the TrainSpec field ``name``."""
    return "--device" if name == "device" else f"--set {name}"


def _train_fields(
    raw: Any, key: str, fail: Fail, field_key: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """Check one ``train`` mapping where it is written (``key``) and return its values, coerced.

    ``field_key`` names a field in messages (default ``key.field``).
    """
    name_of = field_key or (lambda name: f"{key}.{name}")
    values = {}
    for name, value in _mapping(raw, key, fail).items():
        if name not in TRAIN_FIELDS:
            fail(name_of(str(name)), f"unknown key{_hint(str(name), TRAIN_FIELDS)}")
        values[name] = _coerce(value, TRAIN_TYPES[name], name_of(name), fail)
        _check_train_value(name, values[name], name_of(name), fail)
    return values


def _check_train_value(name: str, value: Any, key: str, fail: Fail) -> None:
    """A setting's choices, bounds (finite numbers) or device."""
    choices = TRAIN_CHOICES.get(name)
    if choices is not None and value not in choices:
        fail(key, f"got {value!r}; expected one of {', '.join(map(str, choices))}")
    if name in TRAIN_BOUNDS and value is not None:
        low, inclusive = TRAIN_BOUNDS[name]
        if not math.isfinite(value):
            fail(key, f"must be a finite number, got {value}")
        if value < low or (value == low and not inclusive):
            fail(key, f"must be {'>=' if inclusive else '>'} {low}, got {value}")
    if name == "device":
        _check_device(value, key, fail)


def _check_device(name: str, key: str, fail: Fail) -> None:
    """A device string torch can parse; whether the machine has it is checked where the run starts
    (:func:`benchmark.sweep.check_devices`), which may be another machine."""
    try:
        torch.device(name)
    except RuntimeError as err:
        fail(key, f"not a torch device: {name!r} ({err})")


def _coerce(value: Any, hint: Any, key: str, fail: Fail) -> Any:
    """Check ``value`` against a TrainSpec field type; where floats are expected, ints and strings that
    parse as floats (``"1e-3"``) are accepted as floats."""
    allowed = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    if isinstance(value, bool):
        ok = bool in allowed
    elif isinstance(value, int | str) and float in allowed and int not in allowed:
        try:
            return float(value)
        except ValueError:
            ok = False
    else:
        ok = any(isinstance(value, t) for t in allowed if t is not type(None))
    if not ok:
        names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        fail(key, f"expected {names}, got {value!r}")
    return value
