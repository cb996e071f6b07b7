import math

import numpy as np
import pytest
import torch

from benchmark.config import parse_suite
from benchmark.registry import TASKS
from benchmark.trainer import run
from tasks.quadratics import (
    Problem,
    Quadratics,
    hypervolume,
    make_problem,
    min_norm,
    pareto_distance,
    start_point,
)
from tests.tasks.training import TRAIN_SETTINGS


def identity_pair(c1: list[float], c2: list[float]) -> Problem:
    """T = 2 with A₁ = A₂ = I, s = 1: the Pareto set is the segment [c₁, c₂]."""
    return Problem(torch.tensor([c1, c2], dtype=torch.float64), torch.eye(len(c1)).double().expand(2, -1, -1))


def test_registered_with_defaults():
    assert TASKS.get("quadratics") is Quadratics
    assert Quadratics.description and Quadratics.deterministic
    assert Quadratics.eval_splits == ("train",)
    assert set(Quadratics.train_defaults) <= TRAIN_SETTINGS
    assert Quadratics(num_tasks=5).task_names == ("quad0", "quad1", "quad2", "quad3", "quad4")


def test_problem_geometry():
    problem = make_problem(
        num_tasks=4, dim=5, angle=30.0, condition=100.0, scale_range=1000.0, problem_seed=3
    )
    centres, curvatures = problem.centres, problem.curvatures
    torch.testing.assert_close(centres.norm(dim=1), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(
        centres[:, 0], torch.full((4,), math.cos(math.radians(30)), dtype=torch.float64)
    )
    eigenvalues = torch.linalg.eigvalsh(curvatures)  # sᵢ · (1 .. 100), sᵢ = 1, 10, 100, 1000
    scales = torch.tensor([1.0, 10.0, 100.0, 1000.0], dtype=torch.float64)
    torch.testing.assert_close(eigenvalues[:, 0], scales)
    torch.testing.assert_close(eigenvalues[:, -1], 100 * scales)
    torch.testing.assert_close(curvatures, curvatures.transpose(1, 2), rtol=0, atol=0)


def test_two_centres_are_twice_the_half_angle_apart():
    centres = make_problem(2, 6, 40.0, 1.0, 1.0, problem_seed=7).centres
    assert math.degrees(math.acos(float(centres[0] @ centres[1]))) == pytest.approx(80.0)
    assert torch.allclose(make_problem(3, 4, 0.0, 1.0, 1.0, 0).centres, torch.eye(4)[0].double())


def test_problem_and_starts_depend_on_the_seed_only():
    a, b = make_problem(3, 4, 45.0, 5.0, 2.0, 1), make_problem(3, 4, 45.0, 5.0, 2.0, 1)
    assert torch.equal(a.centres, b.centres) and torch.equal(a.curvatures, b.curvatures)
    assert not torch.equal(a.centres, make_problem(3, 4, 45.0, 5.0, 2.0, 2).centres)
    assert torch.equal(start_point(4, 1, 0), torch.zeros(4, dtype=torch.float64))
    assert float(start_point(4, 1, 2).norm()) == pytest.approx(2.0)
    assert torch.equal(start_point(4, 1, 2), start_point(4, 1, 2))
    assert not torch.equal(start_point(4, 1, 2), start_point(4, 1, 3))


def test_losses_and_gradients_by_hand():
    problem = Problem(
        torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64),
        torch.tensor([[[2.0, 0.0], [0.0, 4.0]], [[1.0, 1.0], [1.0, 3.0]]], dtype=torch.float64),
    )
    x = torch.tensor([0.0, 1.0], dtype=torch.float64)
    # L₁ = ½ (−1, 1) diag(2, 4) (−1, 1)ᵀ = ½ (2 + 4) = 3;  L₂ = ½ (0, −1) B₂ (0, −1)ᵀ = ½ · 3 = 1.5
    torch.testing.assert_close(problem.losses(x), torch.tensor([3.0, 1.5], dtype=torch.float64))
    torch.testing.assert_close(
        problem.gradients(x), torch.tensor([[-2.0, 4.0], [-1.0, -3.0]], dtype=torch.float64)
    )


def test_pareto_points_minimise_the_weighted_sum():
    problem = make_problem(5, 4, 60.0, 20.0, 10.0, 0)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.0, 0.4], dtype=torch.float64)
    x = problem.pareto_point(weights)
    torch.testing.assert_close(weights @ problem.gradients(x), torch.zeros(4, dtype=torch.float64))


def test_min_norm_by_hand():
    # (1, 0) and (−1, 0): 0 is their midpoint.  (2, 0) and (0, 2): the nearest point is (1, 1).
    weights, norm = min_norm(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    assert norm == pytest.approx(0.0, abs=1e-12) and weights.tolist() == pytest.approx([0.5, 0.5])
    weights, norm = min_norm(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    assert norm == pytest.approx(math.sqrt(2)) and weights.tolist() == pytest.approx([0.5, 0.5])
    # (1, 1) and (3, 1): the segment's nearest point to 0 is its end (1, 1), not an interior point.
    weights, norm = min_norm(torch.tensor([[1.0, 1.0], [3.0, 1.0], [2.0, 4.0]]))
    assert norm == pytest.approx(math.sqrt(2)) and weights.tolist() == pytest.approx([1.0, 0.0, 0.0])


def test_min_norm_matches_a_dense_simplex_search():
    grads = torch.tensor([[3.0, 1.0, -1.0], [-1.0, 2.0, 0.5], [0.5, -2.0, 2.0]], dtype=torch.float64)
    grid = torch.tensor(
        [[a, b, 1 - a - b] for a in np.linspace(0, 1, 201) for b in np.linspace(0, 1, 201) if a + b <= 1],
        dtype=torch.float64,
    )
    brute = float((grid @ grads).norm(dim=1).min())
    _, norm = min_norm(grads)
    assert norm <= brute + 1e-12 and norm == pytest.approx(brute, abs=1e-3)


def test_distance_to_the_segment_between_two_centres():
    problem = identity_pair([0.0, 0.0], [2.0, 0.0])
    cases = [([1.0, 1.5], 1.5), ([0.5, -0.2], 0.2), ([-3.0, 4.0], 5.0), ([3.0, 0.0], 1.0), ([1.2, 0.0], 0.0)]
    for point, distance in cases:
        value, weights = pareto_distance(problem, torch.tensor(point, dtype=torch.float64))
        assert value == pytest.approx(distance, abs=1e-7), point
        nearest = problem.pareto_point(weights)
        assert float((nearest - torch.tensor(point).double()).norm()) == pytest.approx(value, abs=1e-7)


def test_zero_distance_iff_the_min_norm_certificate_is_zero():
    problem = make_problem(3, 5, 70.0, 10.0, 10.0, 2)  # the set is a 2-D surface in R⁵
    rng = np.random.default_rng(0)
    for _ in range(5):
        on_set = problem.pareto_point(torch.from_numpy(rng.dirichlet(np.ones(3))))
        assert pareto_distance(problem, on_set)[0] < 1e-7
        assert min_norm(problem.gradients(on_set))[1] < 1e-9
    off_set = on_set + 0.3 * torch.from_numpy(rng.standard_normal(5))
    assert pareto_distance(problem, off_set)[0] > 1e-3
    assert min_norm(problem.gradients(off_set))[1] > 1e-3


def test_distance_is_no_larger_than_a_dense_sample_of_the_set():
    problem = make_problem(3, 3, 80.0, 30.0, 5.0, 4)
    weights = torch.from_numpy(np.random.default_rng(1).dirichlet(np.full(3, 0.5), size=20_000))
    sample = problem.pareto_point(weights)
    for start in (0, 1, 2):
        x = start_point(3, 4, start)
        value, _ = pareto_distance(problem, x)
        brute = float((sample - x).norm(dim=1).min())
        assert value <= brute + 1e-9 and value == pytest.approx(brute, abs=2e-3)


def test_hypervolume_by_hand():
    reference = torch.tensor([2.0, 10.0])
    assert hypervolume(torch.tensor([1.0, 5.0]), reference) == pytest.approx(0.25)  # (1/2) (5/10)
    assert hypervolume(torch.zeros(2), reference) == 1.0
    assert hypervolume(torch.tensor([3.0, 0.0]), reference) == 0.0  # beyond the reference in L₁
    assert hypervolume(torch.tensor([1.0, 5.0]) * 1e6, reference * 1e6) == pytest.approx(0.25)


def test_model_is_the_point_and_heads_are_the_losses():
    task = Quadratics(num_tasks=3, dim=4, start=1)
    model = task.build_model()
    assert model.shared_parameters() == [model.trunk.x]
    assert not any(True for _ in model.heads.parameters())
    outputs = model(None)
    batch = next(task.train_batches(None, torch.Generator()))
    expected = task.problem.losses(task.start).float()
    torch.testing.assert_close(task.losses(outputs, batch), expected)


def test_evaluate_at_the_start_and_on_the_set():
    task = Quadratics(num_tasks=3, dim=4, start=0)
    model = task.build_model()
    values = task.evaluate(model, "train")
    assert {m.name for m in task.metrics()} <= set(values)
    assert values["hypervolume"] == pytest.approx((1 - 1 / 1.1) ** 3, rel=1e-6)
    assert values["pareto_distance"] > 0.1 and values["min_norm"] > 0.1
    with torch.no_grad():
        model.trunk.x.copy_(task.problem.pareto_point(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)))
    values = task.evaluate(model, "train")
    assert values["pareto_distance"] < 1e-5 and values["min_norm"] < 1e-4  # float32 point


@pytest.mark.parametrize(
    ("params", "argument"),
    [
        ({"num_tasks": 1}, "num_tasks"),
        ({"num_tasks": 2.0}, "num_tasks"),
        ({"dim": 1}, "dim"),
        ({"angle": 91}, "angle"),
        ({"angle": "wide"}, "angle"),
        ({"condition": 0.5}, "condition"),
        ({"scale_range": math.nan}, "scale_range"),
        ({"problem_seed": -1}, "problem_seed"),
        ({"start": True}, "start"),
    ],
)
def test_bad_parameters_name_the_argument(params, argument):
    with pytest.raises(ValueError, match=argument):
        Quadratics(**params)


@pytest.mark.parametrize("level", ["param", "feature"])
@pytest.mark.parametrize("method", ["ew", "mgda"])
def test_trains_towards_the_pareto_set(level, method):
    raw = {
        "train": {"steps": 300, "eval_every": 300, "level": level, "lr": 0.05},
        "tasks": [{"name": "quadratics", "params": {"num_tasks": 3, "dim": 4, "start": 1}}],
        "methods": [method],
    }
    result = run(parse_suite(raw).runs[0])
    assert result.status == "ok", result.error
    final = {row.name: row.value for row in result.metrics if row.step == 300 and row.split == "train"}
    start = {row.name: row.value for row in result.metrics if row.step == 0 and row.split == "train"}
    assert final["pareto_distance"] < 0.05 * start["pareto_distance"]
    assert final["min_norm"] < 0.05 * start["min_norm"]
    assert final["hypervolume"] > start["hypervolume"]


def test_evaluate_logs_each_loss_and_its_reference_undeclared():
    task = Quadratics(num_tasks=2, dim=3, start=1)
    values = task.evaluate(task.build_model(), "train")
    expected = task.problem.losses(task.start.float().double())  # the start as the model holds it
    for i in range(2):
        assert values[f"loss/quad{i}"] == pytest.approx(float(expected[i]))
        assert values[f"reference/quad{i}"] == pytest.approx(1.1 * float(expected[i]))
    assert not {m.name for m in task.metrics()} & {"loss/quad0", "reference/quad0"}
