"""Run a suite: skip what the store already holds, run the rest serially or in worker processes.

Each finished run is saved at once, in one transaction, so an interrupted sweep resumes where it
stopped. A failing run is stored as ``failed`` and the sweep goes on; a worker process that dies is
recorded as a failure of the run it held.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed

import torch
from tqdm import tqdm

from benchmark import trainer
from benchmark.config import Suite
from benchmark.registry import load_plugin
from benchmark.specs import RunSpec
from benchmark.store import ResultsStore
from benchmark.trainer import RunResult

log = logging.getLogger(__name__)

EXECUTORS = ("serial", "processes")


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
) -> Counter[str]:
    """Run every pending run of ``suite`` and save each result; returns the count of each status."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; expected one of {', '.join(EXECUTORS)}")
    todo = pending_runs(suite, store, rerun)
    log.info("suite %s: %d runs, %d to run", suite.name, len(suite.runs), len(todo))
    if executor == "serial":
        results = _serial(todo, progress)
    else:
        results = _processes(todo, workers or default_workers())
    statuses: Counter[str] = Counter()
    for result in tqdm(results, total=len(todo), desc=suite.name, disable=not progress or not todo):
        store.save(result)
        statuses[result.status] += 1
        if result.status != "ok":
            log.warning("%s: %s", result.spec.title, result.status)
    return statuses


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _serial(specs: Sequence[RunSpec], progress: bool) -> Iterator[RunResult]:
    """Results one after another, each run with its own step progress bar if ``progress``."""
    for spec in specs:
        yield trainer.run(spec, progress)


def _processes(specs: Sequence[RunSpec], workers: int) -> Iterator[RunResult]:
    """Results in completion order from ``workers`` spawned processes, one torch thread each.

    On an interrupt (Ctrl-C) the runs not yet started are cancelled; what finished is already stored.
    """
    plugins = sorted({p for spec in specs for p in spec.plugins})
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, context, initializer=_init_worker, initargs=(plugins,))
    try:
        futures: dict[Future[RunResult], RunSpec] = {pool.submit(trainer.run, s): s for s in specs}
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as err:  # the worker died (killed, out of memory): record, go on
                now = time.time()
                yield RunResult(
                    futures[future], "failed", error=f"worker process died: {err!r}", started=now, ended=now
                )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _init_worker(plugins: Sequence[str]) -> None:
    torch.set_num_threads(1)
    for plugin in plugins:
        load_plugin(plugin)
