import math

import pytest
import torch

from benchmark.config import parse_suite
from benchmark.registry import TASKS
from benchmark.task import Batch
from benchmark.trainer import run
from tasks.toy2d import (
    FRONT_TOLERANCE,
    VARIANTS,
    Toy2D,
    non_dominated,
    pareto,
    pareto_gap,
    toy_losses,
)
from tests.tasks.training import TRAIN_SETTINGS


def losses_at(x1: float, x2: float, scale1: float = 1.0) -> tuple[float, float]:
    value = toy_losses(torch.tensor([x1, x2], dtype=torch.float64), scale1)
    return float(value[0]), float(value[1])


def model_at(task: Toy2D, point: torch.Tensor):
    model = task.build_model()
    with torch.no_grad():
        model.trunk.x.copy_(point)
    return model


def test_losses_below_the_axis_by_hand():
    # x = (1, -2): c1 = max(tanh(-1), 0) = 0, c2 = tanh(1);
    # h1 = ((-1 + 7)^2 + 0.1 (2 - 8)^2) / 10 - 20 = (36 + 3.6) / 10 - 20 = -16.04
    # h2 = ((-1 - 7)^2 + 0.1 (2 - 8)^2) / 10 - 20 = (64 + 3.6) / 10 - 20 = -13.24
    l1, l2 = losses_at(1.0, -2.0)
    assert l1 == pytest.approx(math.tanh(1) * -16.04, rel=1e-12)
    assert l2 == pytest.approx(math.tanh(1) * -13.24, rel=1e-12)


def test_losses_above_the_axis_by_hand():
    # x = (-7, 2): c1 = tanh(1), c2 = max(tanh(-1), 0) = 0;
    # g1 = log|0.5 (7 - 7) - tanh(-2)| + 6 = log(tanh 2) + 6
    # g2 = log|0.5 (7 + 3) + tanh(-2) + 2| + 6 = log(7 - tanh 2) + 6
    l1, l2 = losses_at(-7.0, 2.0)
    assert l1 == pytest.approx(math.tanh(1) * (math.log(math.tanh(2)) + 6), rel=1e-12)
    assert l2 == pytest.approx(math.tanh(1) * (math.log(7 - math.tanh(2)) + 6), rel=1e-12)


def test_log_argument_is_floored():
    # 0.5 (-x1 - 7) - tanh(-x2) = 0 at x1 = -7 + 2 tanh(x2): g1 = log(5e-6) + 6, c1 = tanh(x2 / 2)
    x2 = 2.0
    l1, _ = losses_at(-7 + 2 * math.tanh(x2), x2)
    assert l1 == pytest.approx(math.tanh(x2 / 2) * (math.log(5e-6) + 6), rel=1e-9)


def test_nashmtl_variant_scales_only_the_first_loss():
    with torch.no_grad():
        l1, l2 = Toy2D("cagrad", [1, -2]).build_model()(None)
        s1, s2 = Toy2D("nashmtl", [1, -2]).build_model()(None)
    assert float(s1) == pytest.approx(0.1 * float(l1))
    assert float(s2) == pytest.approx(float(l2))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_starts_and_defaults(variant):
    starts = VARIANTS[variant].starts
    for i, point in enumerate(starts):
        assert Toy2D(variant, i).start == point
    assert Toy2D(variant, [1, -2]).start == (1.0, -2.0)
    defaults = Toy2D(variant).train_defaults
    assert defaults["steps"] == {"nashmtl": 35_000, "cagrad": 100_000}[variant]
    assert defaults["optimizer"] == "adam" and defaults["lr"] == 1e-3
    assert defaults["clip_grad_norm"] is None and defaults["batch_size"] is None
    assert set(defaults) <= TRAIN_SETTINGS


def test_published_starts():
    assert VARIANTS["nashmtl"].starts == ((-8.5, 7.5), (0, 0), (9, 9), (-7.5, -0.5), (9, -1))
    assert VARIANTS["cagrad"].starts == ((-8.5, 7.5), (-8.5, -5), (9, 9))


def test_registered():
    assert TASKS.get("toy2d") is Toy2D
    assert Toy2D.description


def test_model_is_the_point_and_heads_are_the_losses():
    task = Toy2D("nashmtl", 3)
    model = task.build_model()
    assert model.shared_parameters() == [model.trunk.x]
    assert not any(True for _ in model.heads.parameters())
    z = model.trunk(None)
    assert z.shape == (1, 2)
    assert z[0].tolist() == [-7.5, -0.5]
    outputs = model(None)
    assert [o.shape for o in outputs] == [torch.Size([]), torch.Size([])]
    expected = toy_losses(torch.tensor([-7.5, -0.5]), 0.1)
    batch = next(task.train_batches(None, torch.Generator()))
    assert batch.inputs is None and batch.targets is None
    torch.testing.assert_close(task.losses(outputs, batch), expected)


def test_feature_level_gradients_equal_parameter_gradients():
    model = Toy2D("cagrad", 0).build_model()
    z = model.trunk(None)
    for head in model.heads:
        (by_z,) = torch.autograd.grad(head(z), z, retain_graph=True)
        (by_x,) = torch.autograd.grad(head(model.trunk(None)), model.trunk.x)
        torch.testing.assert_close(by_z[0], by_x)


def test_train_batches_are_endless():
    batches = Toy2D().train_batches(None, torch.Generator())
    assert all(isinstance(next(batches), Batch) for _ in range(3))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pareto_set_is_pareto_stationary(variant):
    points, _ = pareto(variant)
    interior = points[points[:, 0].abs() < 6.9]
    x = interior.clone().requires_grad_(True)
    losses = toy_losses(x, VARIANTS[variant].scale1)
    (g1,) = torch.autograd.grad(losses[:, 0].sum(), x, retain_graph=True)
    (g2,) = torch.autograd.grad(losses[:, 1].sum(), x)
    cosine = torch.nn.functional.cosine_similarity(g1, g2, dim=1)
    assert len(interior) > 1000
    assert torch.all(cosine < -1 + 1e-9)


def test_pareto_set_spans_the_published_segment():
    points, _ = pareto("cagrad")
    assert points[:, 0].min() == pytest.approx(-7, abs=1e-3)
    assert points[:, 0].max() == pytest.approx(7, abs=1e-3)
    middle = points[points[:, 0].abs().argmin()]
    assert float(middle[1]) == pytest.approx(-8.3552, abs=1e-3)  # CAGrad's plotted line, at x1 = 0
    assert torch.all((points[:, 1] > -8.44) & (points[:, 1] < -8.35))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_front_is_mutually_non_dominated(variant):
    points, front = pareto(variant)
    torch.testing.assert_close(front, toy_losses(points, VARIANTS[variant].scale1))
    assert torch.all(front[1:, 0] > front[:-1, 0]) and torch.all(front[1:, 1] < front[:-1, 1])
    sample = front[::97]
    no_worse = (sample[:, None, :] <= sample[None, :, :]).all(-1)
    better = (sample[:, None, :] < sample[None, :, :]).any(-1)
    assert not (no_worse & better).any()


def test_no_grid_point_beats_the_front_and_the_grid_front_is_close():
    _, front = pareto("cagrad")
    axis = torch.linspace(-11, 11, 301, dtype=torch.float64)
    grid = toy_losses(torch.cartesian_prod(axis, axis))
    grid_front = grid[non_dominated(grid)]
    sample = front[::50]
    dominated = (grid_front[:, None, :] < sample[None, :, :] - 1e-9).all(-1)
    assert not dominated.any()
    assert max(pareto_gap(point, front) for point in grid_front) < FRONT_TOLERANCE


def test_non_dominated():
    losses = torch.tensor([[1.0, 5.0], [2.0, 2.0], [3.0, 3.0], [2.0, 4.0], [4.0, 1.0], [1.0, 5.0]])
    assert non_dominated(losses).tolist() == [0, 1, 4]


def test_pareto_gap_is_the_normalised_epsilon_indicator():
    front = torch.tensor([[0.0, 10.0], [1.0, 5.0], [2.0, 0.0]], dtype=torch.float64)  # ranges 2 and 10
    assert pareto_gap(torch.tensor([1.0, 5.0]), front) == 0.0
    assert pareto_gap(torch.tensor([0.5, 7.5]), front) == 0.0  # on a segment
    assert pareto_gap(torch.tensor([0.0, 0.0]), front) == 0.0  # dominates the front: clipped
    assert pareto_gap(torch.tensor([1.2, 6.0]), front) == pytest.approx(0.1)
    assert pareto_gap(torch.tensor([3.0, -1.0]), front) == pytest.approx(0.5)  # beyond the L2 end
    assert pareto_gap(torch.tensor([-1.0, 12.0]), front) == pytest.approx(0.2)  # beyond the L1 end


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_on_front_for_front_points_and_not_for_starts(variant):
    task = Toy2D(variant)
    points, _ = pareto(variant)
    for point in points[:: len(points) // 7]:
        values = task.evaluate(model_at(task, point.float()), "train")
        assert values["on_front"] == 1.0 and values["pareto_gap"] <= FRONT_TOLERANCE
    for i in range(len(VARIANTS[variant].starts)):
        values = Toy2D(variant, i).evaluate(Toy2D(variant, i).build_model(), "train")
        assert values["on_front"] == 0.0 and values["pareto_gap"] > 100 * FRONT_TOLERANCE


def test_evaluate_returns_the_metrics_and_the_point():
    task = Toy2D("nashmtl", 4)
    values = task.evaluate(task.build_model(), "train")
    assert {m.name for m in task.metrics()} <= set(values)
    assert (values["x1"], values["x2"]) == (9.0, -1.0)
    assert (values["loss1"], values["loss2"]) == pytest.approx(losses_at(9.0, -1.0, 0.1), rel=1e-6)
    assert task.eval_splits == ("train",)


def test_evaluate_computes_the_front_under_no_grad():
    pareto.cache_clear()
    task = Toy2D("cagrad", 1)
    with torch.no_grad():
        assert task.evaluate(task.build_model(), "train")["on_front"] == 0.0


def test_landscape():
    landscape = Toy2D("cagrad").landscape()
    assert landscape.trajectory == ("x1", "x2")
    x1_min, x1_max, x2_min, x2_max = landscape.bounds
    for x1, x2 in VARIANTS["nashmtl"].starts + VARIANTS["cagrad"].starts:
        assert x1_min <= x1 <= x1_max and x2_min <= x2 <= x2_max
    assert landscape.losses(torch.zeros(5, 2)).shape == (5, 2)
    assert landscape.pareto_set is pareto("cagrad")[0]


@pytest.mark.parametrize(
    ("params", "argument"),
    [
        ({"variant": "famo"}, "variant"),
        ({"start": 3, "variant": "cagrad"}, "start"),
        ({"start": -1}, "start"),
        ({"start": True}, "start"),
        ({"start": [1.0]}, "start"),
        ({"start": "ab"}, "start"),
        ({"start": [math.nan, 0.0]}, "start"),
    ],
)
def test_bad_parameters_name_the_argument(params, argument):
    with pytest.raises(ValueError, match=argument):
        Toy2D(**params)


@pytest.mark.parametrize(("lr", "reason"), [(1e30, "non-finite"), (1e8, "left the region")])
def test_a_blow_up_is_diverged_and_its_metrics_never_crash(lr: float, reason: str) -> None:
    spec = parse_suite(
        {"tasks": [{"name": "toy2d"}], "methods": ["ew"], "train": {"lr": lr, "steps": 200, "eval_every": 50}}
    ).runs[0]
    result = run(spec)
    assert result.status == "diverged"
    assert reason in result.error


@pytest.mark.parametrize("point", [[math.inf, 1.0], [math.nan, 0.0], [1e300, -1e300]])
def test_pareto_gap_of_extreme_points_is_a_number(point: list[float]) -> None:
    gap = pareto_gap(torch.tensor(point, dtype=torch.float64), pareto("nashmtl")[1])
    assert gap > 1 or math.isinf(gap)
