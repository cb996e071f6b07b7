"""Checkpoints inside a run: a run killed mid-way and resumed ends with bit-identical metrics, for every
method; unusable checkpoints are ignored with a warning; writes are atomic; the sweep resumes and
cleans up."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import tests.benchmark.linear_task  # noqa: F401  (registers the "_linear" task)
from benchmark import checkpoint
from benchmark.config import ConfigError, load_suite, parse_suite
from benchmark.registry import METHODS
from benchmark.specs import PluginSpec, RunSpec, TrainSpec
from benchmark.store import ResultsStore
from benchmark.sweep import checkpoint_folder, run_suite
from benchmark.trainer import RunResult, Trainer, run

ROOT = Path(__file__).resolve().parents[2]
# 3 epochs of 3 steps (batch 512 of 1,078 training images): DWA's loss ratios start in epoch 2, STCH
# (warm-up epoch 1) records its nadir in epoch 1; the checkpoint at step 4 is in the middle of epoch 1.
TRAIN = TrainSpec(steps=9, eval_every=3, batch_size=512, checkpoint_every=4, jacobian="loop")
DIGITS = PluginSpec("digits", {"attributes": ["even", "ge5", "prime"], "hidden": 16})
KILLED_AT = 7  # the run dies in step 7 and resumes from the checkpoint before step 4
PARAMS = {"stch": {"warmup_epoch": 1}}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: these tiny models run many times faster on a shared CPU without contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Killed(BaseException):
    """Stands for SIGKILL: not an ``Exception``, so ``trainer.run`` does not record it as a failure."""


def digits_spec(method: str, train: TrainSpec = TRAIN) -> RunSpec:
    return RunSpec("ckpt", DIGITS, PluginSpec(method, PARAMS.get(method, {})), 0, train)


def rows(result: RunResult) -> list[tuple]:
    return [(r.step, r.split, r.name, r.value) for r in result.metrics]


def killed_at(spec: RunSpec, folder: Path, step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``spec`` with checkpoints in ``folder`` until it dies at the start of ``step``."""
    train_step = Trainer._step

    def dying(self: Trainer, batch: object, at: int, *args: object) -> torch.Tensor:
        if at == step:
            raise Killed
        return train_step(self, batch, at, *args)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_step", dying)
        with pytest.raises(Killed):
            run(spec, checkpoint_dir=folder)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS.names())
def test_a_killed_and_resumed_run_ends_bit_identical(
    method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = digits_spec(method)
    whole = run(spec)
    assert whole.status == "ok", whole.error
    killed_at(spec, tmp_path, KILLED_AT, monkeypatch)
    assert [p.name for p in tmp_path.iterdir()] == [f"{spec.config_hash()}.pt"]
    resumed = run(spec, checkpoint_dir=tmp_path)
    assert resumed.status == "ok", resumed.error
    assert resumed.timings["resumed_step"] == 4
    assert rows(resumed) == rows(whole)


def test_checkpointing_changes_nothing_and_is_written_when_due(tmp_path: Path) -> None:
    spec = digits_spec("pcgrad")
    whole = run(spec)
    checked = run(spec, checkpoint_dir=tmp_path)
    assert rows(checked) == rows(whole)
    state = torch.load(checkpoint.path_for(tmp_path, spec), weights_only=True)
    assert state["progress"]["step"] == 8  # steps 4 and 8; never the last
    assert {r["step"] for r in state["progress"]["metrics"]} == {0, 3, 6}
    assert state["progress"]["batches"] == 8
    assert checked.timings["checkpoint_s"] > 0 and "resumed_step" not in checked.timings


def test_a_resumed_run_draws_the_data_stream_from_where_it_stopped(tmp_path: Path) -> None:
    spec = digits_spec("ew")
    trainer = Trainer(spec, tmp_path)
    for _ in range(5):
        next(trainer.stream)
    trainer.progress.batches = 5
    state = trainer.checkpoint_state()
    expected = next(trainer.stream).inputs
    restored = Trainer(spec, tmp_path)
    restored.restore(state)
    assert torch.equal(next(restored.stream).inputs, expected)


def test_every_rng_is_restored(tmp_path: Path) -> None:
    trainer = Trainer(digits_spec("ew"), tmp_path)
    generators = trainer.data_generator, trainer.method_generator

    def draws() -> list[float]:
        ours = [torch.rand(1, generator=g).item() for g in generators]
        return [torch.rand(1).item(), np.random.rand(), random.random(), *ours]

    saved = checkpoint.rng_states(*generators)
    expected = draws()
    draws()
    checkpoint.set_rng_states(saved, *generators)
    assert draws() == expected


def write_checkpoint(spec: RunSpec, folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    killed_at(spec, folder, KILLED_AT, monkeypatch)
    return checkpoint.path_for(folder, spec)


@pytest.mark.parametrize(
    "spoil, reason",
    [
        (lambda path: path.write_bytes(path.read_bytes()[:200]), "checkpoint ignored"),
        (lambda path: path.write_text("not a checkpoint"), "checkpoint ignored"),
        (lambda path: torch.save({**torch.load(path), "code_version": "0" * 16}, path), "code_version"),
        (lambda path: torch.save({**torch.load(path), "format": 0}, path), "format 0"),
        (lambda path: torch.save([1, 2], path), "not a checkpoint"),
    ],
    ids=["truncated", "text", "other-code", "other-format", "a-list"],
)
def test_an_unusable_checkpoint_is_ignored_with_a_warning(
    spoil, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spec = digits_spec("famo")
    path = write_checkpoint(spec, tmp_path, monkeypatch)
    spoil(path)
    with caplog.at_level(logging.WARNING, logger="benchmark"):
        result = run(spec, checkpoint_dir=tmp_path)
    assert f"{path}: checkpoint ignored, {spec.title} starts from step 0" in caplog.text
    assert reason in caplog.text
    assert "resumed_step" not in result.timings
    assert rows(result) == rows(run(spec))


def test_a_stream_that_does_not_replay_is_caught_and_the_run_starts_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spec = digits_spec("ew")
    path = write_checkpoint(spec, tmp_path, monkeypatch)
    state = torch.load(path, weights_only=True)
    state["rng"]["data"] = torch.Generator().manual_seed(99).get_state()
    torch.save(state, path)
    with caplog.at_level(logging.WARNING, logger="benchmark"):
        result = run(spec, checkpoint_dir=tmp_path)
    assert "training stream of task 'digits' does not replay from its generator" in caplog.text
    assert "resumed_step" not in result.timings and result.status == "ok"


def test_another_run_never_reads_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = digits_spec("ew")
    write_checkpoint(spec, tmp_path, monkeypatch)
    other = dataclasses.replace(spec, seed=1)
    assert checkpoint.path_for(tmp_path, other) != checkpoint.path_for(tmp_path, spec)
    assert checkpoint.load(checkpoint.path_for(tmp_path, spec), other) is None


def test_a_failed_write_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.pt"
    checkpoint.save({"step": 1}, path)

    def torn(state: object, file: object) -> None:
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]


def test_remove_deletes_the_checkpoint_and_leftover_temporary_files(tmp_path: Path) -> None:
    spec = digits_spec("ew")
    path = checkpoint.path_for(tmp_path, spec)
    checkpoint.save({"step": 1}, path)
    (tmp_path / f".{path.name}.1234.tmp").write_bytes(b"killed while writing")
    (tmp_path / "other.pt").write_bytes(b"another run's")
    checkpoint.remove(tmp_path, spec)
    assert [p.name for p in tmp_path.iterdir()] == ["other.pt"]


def test_the_default_schedule_checkpoints_at_evaluations_after_30_seconds() -> None:
    schedule = checkpoint.Schedule(None, steps=100)
    assert not schedule.due(10, evaluated=True)
    schedule.last -= checkpoint.DEFAULT_INTERVAL_S
    assert schedule.due(10, evaluated=True) and not schedule.due(11, evaluated=False)
    assert not schedule.due(0, evaluated=True) and not schedule.due(100, evaluated=True)
    schedule.written()
    assert not schedule.due(20, evaluated=True)


def test_an_explicit_schedule_counts_steps_and_zero_never_checkpoints() -> None:
    every = checkpoint.Schedule(5, steps=20)
    assert [s for s in range(21) if every.due(s, evaluated=s % 2 == 0)] == [5, 10, 15]
    assert not any(checkpoint.Schedule(0, steps=20).due(s, True) for s in range(21))


def test_checkpoint_every_is_not_part_of_the_identity_and_is_validated() -> None:
    spec = digits_spec("ew")
    other = dataclasses.replace(spec, train=dataclasses.replace(TRAIN, checkpoint_every=None))
    assert other.config_hash() == spec.config_hash()
    raw = {"tasks": ["_linear"], "methods": ["ew"], "train": {"checkpoint_every": -1}}
    with pytest.raises(ConfigError, match=r"train.checkpoint_every: must be >= 0, got -1"):
        parse_suite(raw, Path("s.yaml"))


def test_a_run_without_a_folder_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run(digits_spec("ew"))
    assert list(tmp_path.iterdir()) == []


SUITE = {
    "name": "ckpt_sweep",
    "seeds": [0],
    "train": {"steps": 6, "eval_every": 2, "checkpoint_every": 2, "jacobian": "loop"},
    "tasks": [{"name": "_linear"}],
    "methods": ["ew", "pcgrad"],
}


def test_the_sweep_resumes_a_run_and_removes_its_checkpoint_once_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite, store = parse_suite(SUITE), ResultsStore(tmp_path / "store.sqlite")
    folder = checkpoint_folder(store)
    assert folder == tmp_path / "checkpoints"
    killed_at(suite.runs[1], folder, 5, monkeypatch)
    assert run_suite(suite, store, progress=False) == {"ok": 2}
    assert list(folder.iterdir()) == []
    timings = store.timings("ckpt_sweep")
    assert timings[timings["name"] == "resumed_step"]["value"].tolist() == [4.0]
    fresh = ResultsStore(tmp_path / "fresh.sqlite")
    run_suite(suite, fresh, progress=False)
    assert store.metrics("ckpt_sweep")["value"].tolist() == fresh.metrics("ckpt_sweep")["value"].tolist()


def test_a_failed_run_keeps_its_checkpoint_for_the_next_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite, store = parse_suite({**SUITE, "methods": ["ew"]}), ResultsStore(tmp_path / "store.sqlite")
    train_step = Trainer._step

    def failing(self: Trainer, batch: object, at: int, *args: object) -> torch.Tensor:
        if at == 5:
            raise RuntimeError("out of memory")
        return train_step(self, batch, at, *args)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_step", failing)
        assert run_suite(suite, store, progress=False) == {"failed": 1}
    assert [p.suffix for p in checkpoint_folder(store).iterdir()] == [".pt"]
    assert run_suite(suite, store, progress=False) == {"ok": 1}
    assert list(checkpoint_folder(store).iterdir()) == []


@pytest.mark.slow
def test_a_sweep_killed_with_sigkill_resumes_to_the_same_metrics(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    train = {"steps": 300, "eval_every": 20, "checkpoint_every": 20, "batch_size": 64}
    entry = {"name": "digits", "params": {"hidden": 16}}
    raw = {"name": "killed", "tasks": [entry], "methods": ["famo"], "train": train}
    suite.write_text(yaml.safe_dump(raw))

    def command(store: str) -> list[str]:
        args = ["--suite", str(suite), "--executor", "serial", "--no-report"]
        return [sys.executable, str(ROOT / "run_all.py"), "run", *args, "--results", str(tmp_path / store)]

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    victim = subprocess.Popen(command("store.sqlite"), env=env, stderr=subprocess.DEVNULL)
    folder = tmp_path / "checkpoints"
    while victim.poll() is None and not list(folder.glob("*.pt")):
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run ended before its first checkpoint"
    assert ResultsStore(tmp_path / "store.sqlite").finished_hashes() == set()
    subprocess.run(command("store.sqlite"), env=env, check=True, stderr=subprocess.DEVNULL)
    resumed, fresh = ResultsStore(tmp_path / "store.sqlite"), ResultsStore(tmp_path / "fresh.sqlite")
    run_suite(load_suite(suite), fresh, progress=False)  # uninterrupted, in this process
    timings = resumed.timings("killed")
    assert timings[timings["name"] == "resumed_step"]["value"].item() > 0
    columns = ["step", "split", "name", "value"]
    assert resumed.metrics("killed")[columns].equals(fresh.metrics("killed")[columns])
    assert list(folder.iterdir()) == []
