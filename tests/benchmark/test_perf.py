"""The aggregation-cost benchmark: what it times and how it tables it (no timing is asserted)."""

from __future__ import annotations

import torch

from benchmark.perf import Cost, aggregation_costs, cost_table, floor


def test_floor_is_the_gramian_weighted_sum_of_rows() -> None:
    matrix = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(floor(matrix), 5 * matrix[0] + 25 * matrix[1])


def test_every_method_and_size_is_timed_against_its_own_floor() -> None:
    costs = aggregation_costs(["ew", "pcgrad"], num_tasks=3, sizes=[20, 40], repeats=1)
    assert [(c.method, c.params) for c in costs] == [("ew", 20), ("pcgrad", 20), ("ew", 40), ("pcgrad", 40)]
    assert all(c.ms > 0 and c.floor_ms > 0 for c in costs)


def test_table_marks_methods_over_the_goal() -> None:
    costs = [Cost("fast", 100, 1.0, 2.0), Cost("slow", 100, 9.0, 2.0)]
    table = cost_table(costs, goal=2.0)
    assert "| (floor: J Jᵀ + w J) | 2.00 | 1 |" in table
    assert "| fast | 1.00 | 0.50 |" in table and "| slow | 9.00 | 4.50 ⚠ |" in table
