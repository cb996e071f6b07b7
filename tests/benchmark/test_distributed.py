"""Data-parallel steps and runs equal one process's on the whole batch (``benchmark/distributed.py``).

The process groups are started once per world size (gloo, CPU): every process runs every comparison
and writes what it found; the tests then read those findings, one per method and level.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from benchmark import distributed
from benchmark.config import ConfigError, parse_suite
from benchmark.distributed import DataParallel, shard_bounds
from benchmark.gradients import LOCAL, Reducer, backward_step
from benchmark.method import StepContext, get_method
from benchmark.registry import METHODS
from benchmark.specs import PluginSpec, RunSpec, TrainSpec
from benchmark.task import Batch, Task, get_task
from benchmark.trainer import Trainer, run

WORLD_SIZES = (2, 3)
LEVELS = ("param", "feature")
BATCH = 12  # a multiple of 2 and 3
UNEVEN_BATCH = 13  # shards of 7 + 6 rows, or 5 + 4 + 4
DIGITS = {"attributes": ["even", "ge5", "prime"], "hidden": 8}
STATEFUL = ("famo", "gradvac", "nash_mtl", "uw", "dwa", "pcgrad")  # several steps through the trainer
TOLERANCE = {"rtol": 2e-4, "atol": 1e-6}  # float32, sums in another order
# SDMGrad's default inner loop (lr 10, momentum 0.5) amplifies a 1e-7 relative change of its input
# into 1e-3 of its weights (measured on one process alone), so no reduction order can match it to
# float tolerance; with lr 1 the same change leaves the weights unchanged to 4 digits.
PARAMS = {"sdmgrad": {"lr": 1.0}}
FACTORED = ("graddrop", "mgda", "trimmed_mean")  # factors combined, and expanded for a method


def _digits_batches(task: Task, size: int) -> tuple[Batch, Batch]:
    batches = task.train_batches(size, torch.Generator().manual_seed(0))
    return next(batches), next(batches)


def _step(
    task: Task, name: str, level: str, batch: Batch, extra: Batch, reducer: Reducer, factored: bool = False
) -> dict:
    """One step from a fresh seeded model and method: the losses and every gradient it sets."""
    torch.manual_seed(0)
    model = task.build_model()
    method = get_method(name, num_tasks=task.num_tasks, **PARAMS.get(name, {}))
    ctx = StepContext(generator=torch.Generator().manual_seed(1), level=level)
    losses = backward_step(model, task, batch, method, ctx, "loop", extra, reducer, factored=factored)
    named = [*model.named_parameters(), *(("method." + n, p) for n, p in method.named_parameters())]
    return {"losses": losses, **{n: p.grad for n, p in named if p.grad is not None}}


def _difference(one: dict, many: dict) -> str | None:
    """Why the data-parallel gradients differ from the one-process ones, or ``None``."""
    if one.keys() != many.keys():
        return f"gradients set on {sorted(many)} instead of {sorted(one)}"
    for key, value in one.items():
        try:
            torch.testing.assert_close(many[key], value, **TOLERANCE)
        except AssertionError as err:
            return f"{key}: {err}"
    return None


def _compare_step(
    task: Task, name: str, level: str, size: int, reducer: Reducer, factored: bool = False
) -> str | None:
    method = get_method(name, num_tasks=task.num_tasks)
    try:
        method.check_level(level)
    except ValueError:
        return None  # undefined at this level; the suite refuses it
    batch, extra = _digits_batches(task, size)
    extra = extra if method.batches_per_step > 1 else None
    one = _step(task, name, level, batch, extra, LOCAL, factored)
    return _difference(one, _step(task, name, level, batch, extra, reducer, factored))


def _compare_run(name: str, reducer: Reducer) -> str | None:
    """A few trainer steps (optimiser, method state, evaluation) against one process."""
    spec = _spec(name, steps=4, distributed=1)
    one, many = Trainer(spec).train(), Trainer(spec, reducer=reducer).train()
    if _rows(one.metrics) != _rows(many.metrics):
        return "different metric rows"
    for a, b in zip(one.metrics, many.metrics, strict=True):
        if abs(a.value - b.value) > 1e-4 * max(1.0, abs(a.value)):
            return f"{a.split}/{a.name} at step {a.step}: {a.value} vs {b.value}"
    return None


def _rows(metrics: list) -> list[tuple[int, str, str]]:
    return [(m.step, m.split, m.name) for m in metrics]


def _spec(name: str, steps: int, distributed: int) -> RunSpec:
    train = TrainSpec(steps=steps, batch_size=BATCH, eval_every=2, jacobian="loop", distributed=distributed)
    return RunSpec("ddp", PluginSpec("digits", DIGITS), PluginSpec(name), 0, train)


def _job(rank: int, world_size: int, port: int, folder: Path) -> None:
    """Spawned: every comparison in one process group; findings to ``folder/rank.pkl``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    reducer = DataParallel(rank, world_size)
    digits, transfer = get_task("digits", **DIGITS), get_task("transfer_digits", hidden=8)
    found: dict[tuple[str, ...], str | None] = {}
    for name in METHODS.names():
        for level in LEVELS:
            found["step", name, level] = _compare_step(digits, name, level, BATCH, reducer)
    for name in ("ew", "pcgrad", "graddrop", "mgda"):
        for level in LEVELS:
            found["uneven", name, level] = _compare_step(digits, name, level, UNEVEN_BATCH, reducer)
            found["task_rows", name, level] = _compare_step(transfer, name, level, BATCH, reducer)
    for name in FACTORED:
        for size in (BATCH, UNEVEN_BATCH):
            found["factored", name, str(size)] = _compare_step(digits, name, "feature", size, reducer, True)
    for name in STATEFUL:
        found["run", name] = _compare_run(name, reducer)
    (folder / f"{rank}.pkl").write_bytes(pickle.dumps(found))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def findings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, list[dict]]]:
    """Each world size's findings, one dict per process."""
    results = {}
    for world_size in WORLD_SIZES:
        folder = tmp_path_factory.mktemp(f"ddp{world_size}")
        args = (world_size, distributed.free_port(), folder)
        torch.multiprocessing.spawn(_job, args=args, nprocs=world_size)
        results[world_size] = [pickle.loads((folder / f"{r}.pkl").read_bytes()) for r in range(world_size)]
    yield results


def _check(findings: dict[int, list[dict]], key: tuple[str, ...]) -> None:
    for world_size, ranks in findings.items():
        for rank, found in enumerate(ranks):
            assert found[key] is None, f"{world_size} processes, process {rank}: {found[key]}"


@pytest.mark.slow
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", METHODS.names())
def test_one_step_equals_the_whole_batch_step(findings: dict, name: str, level: str) -> None:
    """Every registered method at both levels: the same losses, the same gradient on every parameter
    (the method's own included) as one process on the concatenated batch, with the same draws."""
    _check(findings, ("step", name, level))


@pytest.mark.slow
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", ["ew", "pcgrad", "graddrop", "mgda"])
def test_uneven_shards_and_batch_separated_losses(findings: dict, name: str, level: str) -> None:
    """A batch that does not divide (an epoch's last) and losses on their own rows (``task_rows``,
    where a shard may hold no row of a loss)."""
    _check(findings, ("uneven", name, level))
    _check(findings, ("task_rows", name, level))


@pytest.mark.slow
@pytest.mark.parametrize("name", FACTORED)
def test_factored_heads_gather_the_factors_of_every_row(findings: dict, name: str) -> None:
    """``factored_heads``: each process's factors of its rows, gathered, give one process's step
    (even and uneven shards)."""
    for size in (BATCH, UNEVEN_BATCH):
        _check(findings, ("factored", name, str(size)))


@pytest.mark.slow
@pytest.mark.parametrize("name", STATEFUL)
def test_a_few_trainer_steps_match(findings: dict, name: str) -> None:
    _check(findings, ("run", name))


@pytest.mark.slow
def test_a_two_process_run_matches_the_one_process_run() -> None:
    """Through :func:`benchmark.trainer.run`: two spawned processes, process 0's result, the spec as
    configured."""
    spec = _spec("graddrop", steps=3, distributed=2)
    many, one = run(spec), run(replace(spec, train=replace(spec.train, distributed=1)))
    assert many.status == one.status == "ok", many.error
    assert many.spec == spec
    assert _rows(many.metrics) == _rows(one.metrics)
    for a, b in zip(one.metrics, many.metrics, strict=True):
        assert b.value == pytest.approx(a.value, rel=1e-4, abs=1e-6), (a, b)


@pytest.mark.parametrize(
    ("size", "world_size", "expected"),
    [
        (12, 3, [(0, 4), (4, 8), (8, 12)]),
        (13, 3, [(0, 5), (5, 9), (9, 13)]),
        (2, 3, [(0, 1), (1, 2), (2, 2)]),
    ],
)
def test_shard_bounds_are_contiguous_and_cover_the_batch(size: int, world_size: int, expected: list) -> None:
    assert [shard_bounds(size, world_size, r) for r in range(world_size)] == expected
    pieces = torch.arange(size).tensor_split(world_size)
    assert [(int(p[0]), int(p[-1]) + 1) for p in pieces if len(p)] == [b for b in expected if b[0] < b[1]]


def test_shares_of_mean_losses_sum_to_the_whole_batch_loss() -> None:
    """Hand-computed: rows 0-4 of 6 owned by loss 0, rows 3-5 by loss 1; process 0 of 2 holds rows
    0-2, so 3 of loss 0's 5 rows and none of loss 1's (its NaN loss of no rows becomes exactly 0)."""
    rows = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    batch = Batch(torch.zeros(6, 1), task_rows=rows)
    share = DataParallel(0, 2).share(torch.tensor([2.0, float("nan")]), batch)
    torch.testing.assert_close(share, torch.tensor([2.0 * 3 / 5, 0.0]))
    shard = DataParallel(1, 2).shard(batch)
    torch.testing.assert_close(shard.inputs, torch.zeros(3, 1))
    assert shard.task_rows.tolist() == [[True, True, False], [True, True, True]]
    even = DataParallel(1, 3).share(torch.tensor([3.0]), Batch(torch.zeros(6, 1)))
    torch.testing.assert_close(even, torch.tensor([1.0]))


def test_a_batch_without_rows_cannot_be_sharded() -> None:
    with pytest.raises(ValueError, match="data rows"):
        DataParallel(0, 2).shard(Batch())


def test_batchnorm_is_refused_on_the_cpu() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    with pytest.raises(ValueError, match="BatchNorm"):
        distributed.sync_batchnorm(model, torch.device("cpu"))
    plain = torch.nn.Linear(2, 2)
    assert distributed.sync_batchnorm(plain, torch.device("cpu")) is plain


@pytest.mark.parametrize("batch_size", [10, None])
def test_the_batch_size_must_divide_by_the_processes(batch_size: int | None) -> None:
    suite = {"tasks": ["digits"], "methods": ["ew"], "train": {"distributed": 4, "batch_size": batch_size}}
    expected = rf"methods\[0\]\.train\.distributed: 4 processes .* got batch_size {batch_size}"
    with pytest.raises(ConfigError, match=expected):
        parse_suite(suite, Path("s.yaml"))


def test_distributed_is_not_part_of_a_runs_identity() -> None:
    spec = _spec("ew", steps=1, distributed=1)
    assert replace(spec, train=replace(spec.train, distributed=4)).config_hash() == spec.config_hash()
