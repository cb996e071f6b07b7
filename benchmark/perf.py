"""Aggregation cost: each method's ``combine`` on a random gradient matrix, as a ratio to the floor.

The floor is the work no method can avoid: the Gramian ``J Jᵀ`` plus one weighted sum of the rows
``w @ J``. Floor and methods are timed in the same process, interleaved, with the same matrix, so the
ratios are comparable; absolute times depend on the machine. This is a benchmark, not a test.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from benchmark.method import Method, StepContext, get_method


@dataclass(frozen=True)
class Cost:
    method: str
    params: int
    ms: float
    floor_ms: float

    @property
    def ratio(self) -> float:
        return self.ms / self.floor_ms


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` in ms, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def floor(matrix: Tensor) -> Tensor:
    """The unavoidable work of a weighted method: the Gramian, then one weighted sum of the rows."""
    gramian = matrix @ matrix.T
    return gramian.diagonal() @ matrix


def method_cost(name: str, matrix: Tensor, extra: Tensor, repeats: int, warmup_steps: int = 3) -> float:
    """Steady-state time of one ``combine`` of a fresh method, after ``warmup_steps`` updates (stateful
    methods fill their histories); two-batch methods get ``extra`` as their second batch's gradients."""
    num_tasks = matrix.shape[0]
    method: Method = get_method(name, num_tasks)
    generator = torch.Generator().manual_seed(0)
    losses = torch.rand(num_tasks, generator=generator) + 0.5

    steps = iter(range(1 << 62))
    second = extra if method.batches_per_step > 1 else None  # as the trainer fills it

    def step() -> Tensor:
        ctx = StepContext(losses=losses, step=next(steps), generator=generator, extra_grads=second)
        with torch.no_grad():
            return method.combine(matrix, ctx)

    for _ in range(warmup_steps):
        step()
    return median_ms(step, repeats)


def aggregation_costs(
    names: Sequence[str], num_tasks: int, sizes: Sequence[int], repeats: int, seed: int = 0
) -> list[Cost]:
    """The cost of every method at every size, with the floor re-measured before each method."""
    costs = []
    for size in sizes:
        generator = torch.Generator().manual_seed(seed)
        matrix = torch.randn(num_tasks, size, generator=generator)
        extra = torch.randn(num_tasks, size, generator=generator)
        for name in names:
            floor_ms = median_ms(lambda m=matrix: floor(m), repeats)
            costs.append(Cost(name, size, method_cost(name, matrix, extra, repeats), floor_ms))
    return costs


def cost_table(costs: Sequence[Cost], goal: float = 2.0) -> str:
    """Markdown: one row per method, one ms and one ratio column per size; ratios over ``goal`` marked."""
    sizes = sorted({c.params for c in costs})
    by_key = {(c.method, c.params): c for c in costs}
    header = "| method | " + " | ".join(f"P={p:.0e} ms | ×floor" for p in sizes) + " |"
    lines = [header, "|---|" + "---:|---:|" * len(sizes)]
    floors = " | ".join(
        f"{statistics.median(c.floor_ms for c in costs if c.params == p):.2f} | 1" for p in sizes
    )
    lines.append(f"| (floor: J Jᵀ + w J) | {floors} |")
    for name in dict.fromkeys(c.method for c in costs):
        cells = []
        for p in sizes:
            cost = by_key[(name, p)]
            mark = " ⚠" if cost.ratio > goal else ""
            cells.append(f"{cost.ms:.2f} | {cost.ratio:.2f}{mark}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
