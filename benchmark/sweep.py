"""Run a suite: skip what the store already holds, hand the rest to an executor.

An executor (:data:`EXECUTORS`: ``serial``, ``processes``, ``ray``) takes the pending runs and yields
their results as they finish. Each result is saved at once, in one transaction, so an interrupted
sweep resumes where it stopped; inside a run, checkpoints under ``checkpoints/`` beside the store let
an interrupted run continue from its last one (:mod:`benchmark.checkpoint`). A failing run is stored
as ``failed`` and the sweep goes on; a worker process that dies is recorded as a failure of the run it
held. Runs carry their plugin files (``RunSpec.plugins``), which every worker loads before building
the run.

Before training, the sweep claims its pending runs in the store (:meth:`ResultsStore.claim`) and
keeps the claims alive from a heartbeat thread, so that two sweeps on one store never train one
configuration twice; the runs another live sweep holds are skipped (run the command again later).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from benchmark import checkpoint, ray_executor, trainer
from benchmark.config import Suite
from benchmark.errors import UserError
from benchmark.registry import Registry
from benchmark.specs import RunSpec
from benchmark.store import FINISHED, Owner, ResultsStore
from benchmark.trainer import RunResult

log = logging.getLogger(__name__)

CLAIM_EXPIRY = 300.0
"""Seconds after its last heartbeat when a claim of a sweep on another host expires."""
HEARTBEAT = 30.0
"""Seconds between a sweep's heartbeats on its claims."""
PARENT_POLL = 0.5
"""Seconds between a worker process's checks that its driver is still alive."""


class Executor(ABC):
    """Runs specs somewhere and yields their results in completion order.

    On an interrupt (Ctrl-C) it stops starting runs; what was yielded is already stored. Runs
    checkpoint in, and resume from, ``checkpoint_dir`` (none: no checkpoints).
    """

    name: str

    def __init__(
        self, workers: int | None = None, progress: bool = True, checkpoint_dir: Path | None = None
    ) -> None:
        self.workers = workers or default_workers()
        self.progress = progress
        self.checkpoint_dir = checkpoint_dir

    @abstractmethod
    def run(self, specs: Sequence[RunSpec]) -> Iterator[RunResult]:
        """The result of every spec, each as soon as it is known."""


EXECUTORS: Registry[type[Executor]] = Registry("executor", None)


def pending_runs(suite: Suite, store: ResultsStore, rerun: bool = False) -> list[RunSpec]:
    """The suite's runs without a finished record of the same config hash (all of them if ``rerun``)."""
    done = set() if rerun else store.finished_hashes()
    return [spec for spec in suite.runs if spec.config_hash() not in done]


def run_suite(
    suite: Suite,
    store: ResultsStore,
    executor: str = "serial",
    workers: int | None = None,
    rerun: bool = False,
    progress: bool = True,
    options: Mapping[str, Any] | None = None,
) -> Counter[str]:
    """Run every pending run of ``suite`` with the named executor (built with ``options``, e.g. Ray's
    ``address``) and save each result; returns the count of each status. A run's checkpoint is removed
    once it is stored as finished (a failed run keeps it, so that the next sweep resumes it)."""
    checkpoints = checkpoint_folder(store)
    runner = EXECUTORS.create(executor, workers, progress, checkpoints, **(options or {}))
    todo = pending_runs(suite, store, rerun)
    log.info("suite %s: %d runs, %d to run", suite.name, len(suite.runs), len(todo))
    statuses: Counter[str] = Counter()
    with claimed(store, todo, rerun) as mine:
        if len(mine) < len(todo):
            log.warning("%d runs are held by another sweep on %s: skipped", len(todo) - len(mine), store.path)
        results = runner.run(mine)
        for result in tqdm(results, total=len(mine), desc=suite.name, disable=not progress or not mine):
            store.save(result)
            if result.status in FINISHED:
                checkpoint.remove(checkpoints, result.spec)
            statuses[result.status] += 1
            if result.status != "ok":
                log.warning("%s: %s", result.spec.title, result.status)
    return statuses


def checkpoint_folder(store: ResultsStore) -> Path:
    """Where the runs of ``store`` checkpoint: ``checkpoints/`` beside it."""
    return store.path.parent / "checkpoints"


@contextmanager
def claimed(store: ResultsStore, specs: Sequence[RunSpec], rerun: bool) -> Iterator[list[RunSpec]]:
    """The specs this process could claim, claims kept alive by a heartbeat thread and released at
    the end (a run saved meanwhile has dropped its own)."""
    owner = Owner.this_process()
    mine = store.claim([spec.config_hash() for spec in specs], owner, CLAIM_EXPIRY, rerun)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(store, owner, stop), daemon=True)
    beat.start()
    try:
        yield [spec for spec in specs if spec.config_hash() in mine]
    finally:
        stop.set()
        beat.join()
        store.release(owner)


def _heartbeat(store: ResultsStore, owner: Owner, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT):
        store.heartbeat(owner)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def check_devices(specs: Sequence[RunSpec]) -> None:
    """Fail before anything runs if a run asks for a device this machine does not have."""
    for name in sorted({spec.train.device for spec in specs}):
        device = torch.device(name)
        if device.type == "cpu":
            continue
        accelerator = torch.accelerator.current_accelerator(check_available=True)
        if accelerator is None or accelerator.type != device.type:
            problem = f"{device.type.upper()} is not available on this machine"
        elif device.index is not None and device.index >= torch.accelerator.device_count():
            problem = f"this machine has {torch.accelerator.device_count()} {device.type} device(s)"
        else:
            continue
        example = next(spec for spec in specs if spec.train.device == name)
        raise UserError(f"train.device (or --device): {name!r}: {problem} (run {example.title})")


@EXECUTORS.register("serial")
class SerialExecutor(Executor):
    """Runs one after another in this process, each with its own step progress bar if ``progress``."""

    def run(self, specs: Sequence[RunSpec]) -> Iterator[RunResult]:
        check_devices(specs)
        for spec in specs:
            yield trainer.run(spec, self.progress, self.checkpoint_dir)


@EXECUTORS.register("processes")
class ProcessExecutor(Executor):
    """Runs in ``workers`` spawned processes of this machine, one torch thread each.

    On an interrupt (Ctrl-C) the runs not yet started are cancelled.
    """

    def run(self, specs: Sequence[RunSpec]) -> Iterator[RunResult]:
        check_devices(specs)
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(self.workers, context, initializer=_start_worker, initargs=(os.getpid(),))
        try:
            futures: dict[Future[RunResult], RunSpec] = {
                pool.submit(trainer.run, s, False, self.checkpoint_dir): s for s in specs
            }
            for future in as_completed(futures):
                try:
                    yield future.result()
                except Exception as err:  # the worker died (killed, out of memory): record, go on
                    now, error = time.time(), f"worker process died: {err!r}"
                    yield RunResult(futures[future], "failed", error=error, started=now, ended=now)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _start_worker(driver: int) -> None:
    """Worker start-up: one torch thread per process, so that workers do not oversubscribe the CPUs,
    and a thread that ends the worker soon after its driver dies (even by ``kill -9``)."""
    torch.set_num_threads(1)
    threading.Thread(target=_exit_with_parent, args=(driver,), daemon=True).start()


def _exit_with_parent(driver: int) -> None:
    """Exit when this process's parent is no longer ``driver`` (an orphan is adopted by another)."""
    while os.getppid() == driver:
        time.sleep(PARENT_POLL)
    os._exit(1)


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Runs as Ray tasks (:mod:`benchmark.ray_executor`) on the cluster at ``address`` (``auto``,
    ``ray://host:port``), or on a local Ray of ``workers`` CPUs; a task whose worker dies is retried
    up to ``max_retries`` times."""

    def __init__(
        self,
        workers: int | None = None,
        progress: bool = True,
        checkpoint_dir: Path | None = None,
        address: str | None = None,
        max_retries: int = 2,
    ) -> None:
        super().__init__(workers, progress, checkpoint_dir)
        self.address = address
        self.max_retries = max_retries

    def run(self, specs: Sequence[RunSpec]) -> Iterator[RunResult]:
        if not specs:
            return iter(())
        options = (self.address, self.max_retries, self.checkpoint_dir)
        return ray_executor.run_on_ray(specs, self.workers, *options)
