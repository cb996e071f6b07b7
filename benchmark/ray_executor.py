"""Runs on a Ray cluster (https://docs.ray.io/en/latest/ray-core/tasks.html): one Ray task per run.

The driver (this process) submits every run as a task with the resources it asks for
(``RunSpec.resources``; by default 1 CPU, and 1 GPU for a run on a CUDA device), collects the results
as they finish (``ray.wait``) and alone writes the store, so the cluster needs no shared file system
for results. The project and the plugin files reach the workers through the job's runtime environment
(``working_dir``: this project; ``py_modules``: a package of copies of plugin files from outside it),
so a worker on another machine imports them as the driver does. A real-data task still reads its
dataset from its ``data_root`` path on the worker's machine.

A task whose worker dies (killed, out of memory) is retried by Ray up to ``max_retries`` times, then
stored ``failed`` with the reason. Ray is an optional dependency (``requirements-ray.txt``).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from benchmark.errors import UserError
from benchmark.specs import RunSpec
from benchmark.trainer import RunResult

log = logging.getLogger(__name__)

PROJECT = Path(__file__).resolve().parents[1]
PLUGIN_PACKAGE = "_gsb_ray_plugins"
INSTALL_HINT = "pip install -r requirements-ray.txt"


def import_ray() -> ModuleType:
    """The ``ray`` module, or a :class:`UserError` saying what to install."""
    try:
        return importlib.import_module("ray")
    except ImportError as err:
        raise UserError(f"--executor ray: Ray is not installed ({err}); run: {INSTALL_HINT}") from err


def resources(spec: RunSpec) -> dict[str, float]:
    """What the run reserves: its suite's ``resources`` over the device's defaults (1 CPU; 1 GPU on
    CUDA)."""
    gpus = 1.0 if torch.device(spec.train.device).type == "cuda" else 0.0
    return {"num_cpus": 1.0, "num_gpus": gpus, **spec.resources}


def run_on_ray(
    specs: Sequence[RunSpec],
    workers: int,
    address: str | None,
    max_retries: int,
    checkpoint_dir: Path | None = None,
) -> Iterator[RunResult]:
    """The result of every spec, in completion order. Without ``address`` a local Ray with
    ``workers`` CPUs is started (and stopped at the end); on an interrupt the pending tasks are
    cancelled. Runs checkpoint in ``checkpoint_dir`` on the machine of the worker that trains them
    (on a cluster, a folder every node can write: a run resumes from it on any node only if the folder
    is shared)."""
    ray = import_ray()
    with tempfile.TemporaryDirectory(prefix="gsb_ray_") as folder:
        shipped, modules = ship_plugins(specs, Path(folder))
        connect(ray, address, workers, modules)
        pending: dict[Any, RunSpec] = {}
        try:
            check_capacity(specs, ray.cluster_resources())
            remote = ray.remote(train_in_worker)
            for spec in specs:
                options = remote.options(max_retries=max_retries, **resources(spec))
                pending[options.remote(shipped(spec), checkpoint_dir)] = spec
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                yield collect(ray, ref, pending.pop(ref), max_retries)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            ray.shutdown()


def connect(ray: ModuleType, address: str | None, workers: int, py_modules: list[str]) -> None:
    """``ray.init``: a local Ray of ``workers`` CPUs (quiet, no dashboard), or the cluster at ``address``."""
    excludes = ["/results/", "/reports/"]  # and .git, by Ray's default
    runtime_env: dict[str, Any] = {"working_dir": str(PROJECT), "excludes": excludes}
    if py_modules:
        runtime_env["py_modules"] = py_modules
    options: dict[str, Any] = {"logging_level": logging.WARNING, "runtime_env": runtime_env}
    if address is None:
        options |= {"num_cpus": workers, "include_dashboard": False, "log_to_driver": False}
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UserError(f"--address: {address!r}: cannot connect to a Ray cluster ({err})") from err


def ship_plugins(specs: Sequence[RunSpec], folder: Path) -> tuple[Any, list[str]]:
    """Plugin paths as a worker sees them: relative to the project (its ``working_dir``), or, for a
    file outside it, a copy in the package :data:`PLUGIN_PACKAGE` (``py_modules``).

    Returns the function that rewrites a spec's plugins, and the ``py_modules`` list.
    """
    package = folder / PLUGIN_PACKAGE
    renamed: dict[str, str] = {}
    for i, plugin in enumerate(dict.fromkeys(p for spec in specs for p in spec.plugins)):
        path = Path(plugin)
        if path.is_relative_to(PROJECT):
            renamed[plugin] = str(path.relative_to(PROJECT))
            continue
        package.mkdir(exist_ok=True)
        (package / "__init__.py").touch()
        shutil.copyfile(path, package / f"p{i}_{path.name}")
        renamed[plugin] = f"{PLUGIN_PACKAGE}/p{i}_{path.name}"

    def shipped(spec: RunSpec) -> RunSpec:
        return dataclasses.replace(spec, plugins=tuple(renamed[p] for p in spec.plugins))

    return shipped, [str(package)] if package.exists() else []


def check_capacity(specs: Sequence[RunSpec], cluster: dict[str, float]) -> None:
    """Fail before submitting a run that asks for more CPUs or GPUs than the whole cluster has (Ray
    would wait for it forever)."""
    for spec in specs:
        for key, total in (("num_cpus", cluster.get("CPU", 0.0)), ("num_gpus", cluster.get("GPU", 0.0))):
            wanted = resources(spec)[key]
            if wanted > total:
                raise UserError(
                    f"resources.{key} (or train.device): run {spec.title} asks for {wanted:g}, "
                    f"but the Ray cluster has {total:g}"
                )


def train_in_worker(spec: RunSpec, checkpoint_dir: Path | None = None) -> RunResult:
    """Ray task body: check the device here, resolve the shipped plugins, train."""
    from benchmark import sweep, trainer  # the worker imports what the driver's modules import

    torch.set_num_threads(max(1, math.floor(resources(spec)["num_cpus"])))
    sweep.check_devices([spec])
    spec = dataclasses.replace(spec, plugins=tuple(map(_worker_path, spec.plugins)))
    return trainer.run(spec, checkpoint_dir=checkpoint_dir)


def _worker_path(plugin: str) -> str:
    """A shipped plugin's path in this worker (see :func:`ship_plugins`)."""
    if plugin.startswith(f"{PLUGIN_PACKAGE}/"):
        package = importlib.import_module(PLUGIN_PACKAGE)
        return str(Path(package.__file__).parent / plugin.split("/", 1)[1])
    return str(Path(plugin).resolve())


def collect(ray: ModuleType, ref: Any, spec: RunSpec, max_retries: int) -> RunResult:
    """The finished task's result, with the driver's spec; a worker that died (after ``max_retries``
    retries) is a ``failed`` result naming the reason; an error the user must fix is raised."""
    try:
        return dataclasses.replace(ray.get(ref), spec=spec)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, UserError):
            raise err.cause from None
        error = f"Ray task raised: {err}"
    except ray.exceptions.RayError as err:
        error = f"Ray worker died ({type(err).__name__}), retried {max_retries} times: {err}"
    now = time.time()
    return RunResult(spec, "failed", error=error, started=now, ended=now)
