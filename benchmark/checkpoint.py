"""Checkpoints inside a run: what a run needs to continue exactly where it stopped, one file per run.

A checkpoint is a ``torch.save`` d dict, ``<folder>/<config hash>.pt`` (the sweep's folder is
``checkpoints/`` beside the results store). The trainer fills it (:meth:`benchmark.trainer.Trainer.
checkpoint_state`): model, optimisers, scheduler, the method's ``state_dict`` (its parameters and
:attr:`~benchmark.method.Method.state_attributes`), every RNG state (:func:`rng_states`), the position
in the training stream and the metrics and timings so far. It is written atomically (:func:`save`:
a temporary file in the same folder, flushed and ``fsync`` ed, renamed over the old one with
``os.replace``, then the folder ``fsync`` ed), so a kill at any moment leaves the previous checkpoint or
the new one, never a torn file.

A checkpoint is used only by the run that wrote it, with the same code: :func:`load` ignores, with a
warning, a file that does not unpickle (corrupt, truncated) or was written by another format, code
version (:func:`code_version`), configuration or device. The run then starts from step 0.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import random
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.specs import RunSpec

log = logging.getLogger(__name__)

FORMAT = 1
"""The layout of a checkpoint's dict; a file of another format is ignored."""
DEFAULT_INTERVAL_S = 30.0
"""With ``checkpoint_every`` unset, a run checkpoints at an evaluation once this much wall time has
passed since it started or last checkpointed: runs shorter than this never write one."""
SOURCES = ("benchmark", "methods", "tasks")
"""The packages whose code decides a run's numbers (plugins outside them enter the config hash)."""


class CheckpointError(Exception):
    """A checkpoint that cannot resume this run: another format, code version, configuration or device,
    or contents that do not fit the run."""


@cache
def code_version() -> str:
    """Hash of the sources of :data:`SOURCES` and of the Python, torch and NumPy versions: a checkpoint
    written by other code could resume to other numbers, so it is not used."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256(repr((platform.python_version(), torch.__version__, np.__version__)).encode())
    for package in SOURCES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def path_for(folder: str | Path, spec: RunSpec) -> Path:
    """Where the run ``spec`` keeps its checkpoint under ``folder``."""
    return Path(folder) / f"{spec.config_hash()}.pt"


def header(spec: RunSpec) -> dict[str, Any]:
    """What identifies a checkpoint's writer; :func:`load` compares it with the run's."""
    return {
        "format": FORMAT,
        "code_version": code_version(),
        "config_hash": spec.config_hash(),
        "device": spec.train.device,
    }


def save(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically: to a temporary file in the same folder, flushed and
    fsynced, renamed over ``path``, then the folder fsynced so that the rename itself is durable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_folder(path.parent)


def load(path: Path, spec: RunSpec) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it can resume ``spec``; ``None`` when there is none, or (with a
    warning saying why) when it is unreadable or was written by another code version, configuration,
    format or device. Tensors are loaded on the run's device; nothing but tensors and plain Python
    values is unpickled (``weights_only``)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=spec.train.device, weights_only=True)
        check_header(state, spec)
    except Exception as err:  # torch.load raises many kinds on a corrupt file; any means "do not use"
        log.warning("%s: checkpoint ignored, %s starts from step 0: %s", path, spec.title, err)
        return None
    return state


def check_header(state: Any, spec: RunSpec) -> None:
    """Raise :class:`CheckpointError` unless ``state`` was written for ``spec`` by this code."""
    if not isinstance(state, dict):
        raise CheckpointError(f"not a checkpoint (a {type(state).__name__})")
    for key, expected in header(spec).items():
        if state.get(key) != expected:
            raise CheckpointError(f"written with {key} {state.get(key)!r}, this run has {expected!r}")


def remove(folder: str | Path, spec: RunSpec) -> None:
    """Delete the run's checkpoint and any temporary file a killed write left beside it."""
    path = path_for(folder, spec)
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        leftover.unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def rng_states(data: torch.Generator, method: torch.Generator) -> dict[str, Any]:
    """Every random stream a run draws from: torch's global CPU and CUDA generators, NumPy's and
    Python's global ones, and the run's data and method generators."""
    numpy_state = np.random.get_state(legacy=False)
    key = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))  # a tensor: weights_only loads it
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {**numpy_state, "state": {**numpy_state["state"], "key": key}},
        "python": random.getstate(),
        "data": data.get_state(),
        "method": method.get_state(),
    }


def set_rng_states(states: dict[str, Any], data: torch.Generator, method: torch.Generator) -> None:
    """Restore what :func:`rng_states` saved."""
    torch.set_rng_state(states["torch"].cpu())
    if states["cuda"]:
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])
    numpy_state = states["numpy"]
    key = numpy_state["state"]["key"].cpu().numpy().astype(np.uint32)
    np.random.set_state({**numpy_state, "state": {**numpy_state["state"], "key": key}})
    random.setstate(states["python"])
    data.set_state(states["data"].cpu())
    method.set_state(states["method"].cpu())


class Schedule:
    """When a run writes its checkpoint, from ``TrainSpec.checkpoint_every``: every n steps; unset
    (``None``), at an evaluation once :data:`DEFAULT_INTERVAL_S` have passed since the run started or
    last checkpointed; 0, never. Never at step 0 or the last step (the result is stored then)."""

    def __init__(self, every: int | None, steps: int) -> None:
        self.every, self.steps = every, steps
        self.last = time.monotonic()

    def due(self, step: int, evaluated: bool) -> bool:
        """Whether to checkpoint before training ``step`` (``evaluated``: the run just evaluated)."""
        if not 0 < step < self.steps:
            return False
        if self.every is None:
            return evaluated and time.monotonic() - self.last >= DEFAULT_INTERVAL_S
        return self.every > 0 and step % self.every == 0

    def written(self) -> None:
        """Note that a checkpoint was just written."""
        self.last = time.monotonic()


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; Windows cannot open a folder and needs no call)."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
