"""YAML suite -> validated, frozen run specs. Every error names the file, the key path and the bad value.

A suite file::

    name: quick                       # default: the file's stem
    seeds: [0, 1, 2]                  # or a count: 3 -> 0, 1, 2
    plugins: [my_methods.py]          # optional, relative to the suite file
    train: {steps: 500}               # TrainSpec overrides for every run
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

Training settings are merged, later winning: ``TrainSpec`` defaults, the task's ``train_defaults``,
the suite's ``train``, the task entry's ``train``, the method entry's ``train``.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import itertools
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Union, get_args, get_origin, get_type_hints

import torch
import yaml

from benchmark.errors import UserError
from benchmark.method import WeightedMethod, build_method
from benchmark.registry import METHODS, TASKS, Registry, UnknownNameError, load_plugin
from benchmark.specs import JACOBIAN_STRATEGIES, OPTIMIZERS, SCHEDULES, PluginSpec, RunSpec, TrainSpec

SUITE_KEYS = ("name", "description", "seeds", "plugins", "train", "tasks", "methods")
ENTRY_KEYS = ("name", "label", "params", "grid", "train")
METHOD_KEYS = (*ENTRY_KEYS, "weighting")
TRAIN_CHOICES = {
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "jacobian": JACOBIAN_STRATEGIES,
    "level": ("param", "feature", None),
}


class ConfigError(UserError):
    """A suite file that cannot be run; the message starts with ``file: key.path:``."""


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    path: Path | None
    runs: tuple[RunSpec, ...]


def load_suite(
    path: str | Path, overrides: Mapping[str, Any] | None = None, plugins: Sequence[str | Path] = ()
) -> Suite:
    """Read and validate a suite file; ``overrides`` are TrainSpec settings that win over the file,
    ``plugins`` are plugin files (the command line's ``--plugin``) added to the suite's ``plugins``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: suite file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    return parse_suite(raw, source=path, overrides=overrides, plugins=plugins)


def parse_suite(
    raw: Any,
    source: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    plugins: Sequence[str | Path] = (),
) -> Suite:
    """Validate a suite already read from YAML (a mapping); ``plugins`` as in :func:`load_suite`."""
    where = str(source) if source else "<suite>"
    fail = _failer(where)
    suite = _mapping(raw, "", fail)
    _check_keys(suite, SUITE_KEYS, "", fail)
    for key in ("tasks", "methods"):
        if not suite.get(key):
            fail(key, f"a suite needs at least one entry under {key!r}")
    name = str(suite.get("name") or (source.stem if source else "suite"))
    extra = [load_plugin(p) for p in plugins]  # every run carries them: workers load them too
    plugins = tuple(dict.fromkeys([*extra, *_plugins(suite.get("plugins", []), source, fail)]))
    seeds = _seeds(suite.get("seeds", [0]), fail)
    suite_train = _mapping(suite.get("train", {}), "train", fail)
    methods = [
        _method_entry(m, f"methods[{i}]", fail)
        for i, m in enumerate(_list(suite["methods"], "methods", fail))
    ]
    _check_unique_labels(methods, fail)
    runs = []
    for i, task_raw in enumerate(_list(suite["tasks"], "tasks", fail)):
        key = f"tasks[{i}]"
        _, task_entry = _entry(task_raw, key, TASKS, ENTRY_KEYS, fail)
        for task_spec in _expand(task_entry, relabel=False):
            task = _construct(TASKS, task_spec, (), key, fail)
            base_train = {**task.train_defaults, **suite_train, **task_entry.get("train", {})}
            for m_key, method_entry in methods:
                for method_spec in _expand(method_entry, relabel=True, num_tasks=task.num_tasks):
                    _construct_method(method_spec, task.num_tasks, m_key, fail)
                    train_raw = {**base_train, **method_entry.get("train", {}), **(overrides or {})}
                    train = _train_spec(train_raw, f"{key}/{m_key}.train", fail)
                    runs += [RunSpec(name, task_spec, method_spec, s, train, plugins) for s in seeds]
    return Suite(name, str(suite.get("description", "")), source, tuple(runs))


Fail = Callable[[str, str], NoReturn]


def _failer(where: str) -> Fail:
    def fail(key: str, message: str) -> NoReturn:
        raise ConfigError(f"{where}: {key + ': ' if key else ''}{message}")

    return fail


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
            close = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; expected one of {', '.join(allowed)}"
            fail(f"{key}.{k}" if key else str(k), f"unknown {what}{hint}")


def _seeds(value: Any, fail: Fail) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return tuple(range(value))
    if (
        isinstance(value, list)
        and value
        and all(isinstance(s, int) and not isinstance(s, bool) for s in value)
    ):
        return tuple(value)
    fail("seeds", f"expected a positive count or a list of integers, got {value!r}")


def _plugins(value: Any, source: Path | None, fail: Fail) -> tuple[str, ...]:
    paths = []
    for i, item in enumerate(_list(value, "plugins", fail)):
        path = Path(str(item))
        if not path.is_absolute() and source is not None:
            path = source.parent / path
        if not path.is_file():
            fail(f"plugins[{i}]", f"plugin file not found: {path}")
        load_plugin(path)
        paths.append(str(path.resolve()))
    return tuple(paths)


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
    return key, entry


def _method_entry(raw: Any, key: str, fail: Fail) -> tuple[str, dict[str, Any]]:
    """A method entry; its optional ``weighting`` (a name or ``{name, params}``) is checked to be a
    method with task weights and stored as a PluginSpec."""
    key, entry = _entry(raw, key, METHODS, METHOD_KEYS, fail)
    if "weighting" not in entry:
        return key, entry
    w_key = f"{key}.weighting"
    _, weighting = _entry(entry["weighting"], w_key, METHODS, ("name", "params"), fail)
    if not issubclass(METHODS.get(weighting["name"]), WeightedMethod):
        weightings = ", ".join(n for n in METHODS.names() if issubclass(METHODS.get(n), WeightedMethod))
        fail(f"{w_key}.name", f"{weighting['name']!r} gives no task weights; weightings: {weightings}")
    spec = PluginSpec(weighting["name"], dict(weighting.get("params", {})))
    return key, {**entry, "weighting": spec}


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


def _construct(
    registry: Registry[type], spec: PluginSpec, args: tuple[Any, ...], key: str, fail: Fail
) -> Any:
    """Build the plugin once so that a bad hyperparameter value fails here, not mid-sweep."""
    try:
        return registry.create(spec.name, *args, **spec.params)
    except Exception as err:  # any constructor error (bad value, missing data) is a config error here
        fail(key, f"{registry.kind} {spec.name!r} with {spec.params}: {err}")


def _construct_method(spec: PluginSpec, num_tasks: int, key: str, fail: Fail) -> None:
    """Build the method (composed with its weighting) once, so a bad value fails here."""
    try:
        build_method(spec, num_tasks)
    except Exception as err:
        what = f"{spec.weighting.name!r} + " if spec.weighting else ""
        fail(key, f"method {what}{spec.name!r} with {spec.params}: {err}")


def _check_unique_labels(methods: list[tuple[str, dict[str, Any]]], fail: Fail) -> None:
    seen: dict[str, str] = {}
    for key, entry in methods:
        label = _label(entry)
        if label in seen and not entry.get("grid"):
            fail(f"{key}.label", f"label {label!r} is already used by {seen[label]}; give one a 'label'")
        seen[label] = key


def _train_spec(raw: Mapping[str, Any], key: str, fail: Fail) -> TrainSpec:
    hints = get_type_hints(TrainSpec)
    fields = [f.name for f in dataclasses.fields(TrainSpec)]
    _check_keys(raw, tuple(fields), key, fail)
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(value, hints[name], f"{key}.{name}", fail)
        choices = TRAIN_CHOICES.get(name)
        if choices is not None and values[name] not in choices:
            fail(f"{key}.{name}", f"got {value!r}; expected one of {', '.join(map(str, choices))}")
    spec = TrainSpec(**values)
    for name in ("steps", "eval_every"):
        if getattr(spec, name) < 1:
            fail(f"{key}.{name}", f"must be >= 1, got {getattr(spec, name)}")
    if spec.lr <= 0:
        fail(f"{key}.lr", f"must be > 0, got {spec.lr}")
    _check_device(spec.device, f"{key}.device", fail)
    return spec


def _check_device(name: str, key: str, fail: Fail) -> None:
    """A device string torch can parse; whether the machine has it is checked where the run starts
    (:func:`benchmark.sweep.check_devices`), which may be another machine."""
    try:
        torch.device(name)
    except RuntimeError as err:
        fail(key, f"not a torch device: {name!r} ({err})")


def _coerce(value: Any, hint: Any, key: str, fail: Fail) -> Any:
    """Check ``value`` against a TrainSpec field type; ints are accepted where floats are expected."""
    allowed = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    if isinstance(value, bool):
        ok = bool in allowed
    elif isinstance(value, int) and float in allowed and int not in allowed:
        return float(value)
    else:
        ok = any(isinstance(value, t) for t in allowed if t is not type(None))
    if not ok:
        names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        fail(key, f"expected {names}, got {value!r}")
    return value
