import math

import pytest
import torch

from benchmark.config import parse_suite
from benchmark.method import StepContext, get_method
from benchmark.registry import TASKS
from benchmark.trainer import run
from tasks.sign_conflict import (
    JOINT_TOLERANCE,
    TERRACE_END,
    SignConflict,
    profile_losses,
    sign_conflict_losses,
    start_point,
)
from tests.tasks.training import TRAIN_SETTINGS


def profile(u: float) -> tuple[float, float]:
    values = profile_losses(torch.tensor(u, dtype=torch.float64))
    return float(values[0]), float(values[1])


def profile_gradients(u: float) -> tuple[float, float]:
    point = torch.tensor(u, dtype=torch.float64, requires_grad=True)
    g1, g2 = torch.autograd.grad(
        profile_losses(point), point, torch.eye(2, dtype=torch.float64), is_grads_batched=True
    )[0]
    return float(g1), float(g2)


def final_metrics(method: str, params: dict, steps: int, level: str | None = None) -> dict[str, float]:
    train = {"steps": steps, "eval_every": steps} | ({"level": level} if level else {})
    raw = {"train": train, "tasks": [{"name": "sign_conflict", "params": params}], "methods": [method]}
    result = run(parse_suite(raw).runs[0])
    assert result.status == "ok", result.error
    return {row.name: row.value for row in result.metrics if row.step == steps and row.split == "train"}


def test_registered_with_defaults():
    assert TASKS.get("sign_conflict") is SignConflict
    assert SignConflict.description and SignConflict.deterministic
    assert SignConflict.eval_splits == ("train",)
    assert set(SignConflict.train_defaults) <= TRAIN_SETTINGS
    assert SignConflict.train_defaults["optimizer"] == "sgd"


def test_profile_by_hand():
    # u = 0.5: ℓ₁ = ½ · 0.25 = 0.125; S = 6 · 0.125 + 0 + 0.02 (1 − cos 2π) = 0.75, ℓ₂ = 0.625
    assert profile(0.5) == pytest.approx((0.125, 0.625))
    # u = 2.25: ℓ₁ = 1.75; S = 6 · 0.5 + 0.02 (1 − cos 9π) = 3.04, ℓ₂ = 1.29
    assert profile(2.25) == pytest.approx((1.75, 1.29))
    # u = −4: ℓ₁ = 3.5; S = 3 + 1 + 0.02 (1 − cos 16π) = 4, ℓ₂ = 0.5
    assert profile(-4.0) == pytest.approx((3.5, 0.5))
    assert profile(0.0) == (0.0, 0.0)


def test_both_losses_are_positive_away_from_the_joint_minimum():
    u = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    values = profile_losses(u)
    away = u.abs() > 1e-9
    assert torch.all(values[away] > 0)
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [2.0, -2.0]], dtype=torch.float64)
    expected = profile_losses(x).sum(1)
    torch.testing.assert_close(sign_conflict_losses(x), expected)
    assert sign_conflict_losses(x)[0].tolist() == [0.0, 0.0]


def test_terrace_wells_are_stationary_points_of_the_sum_with_opposite_gradients():
    for well in (1.5, 2.0, 2.5, -2.0):  # multiples of the ripple period on the terrace
        g1, g2 = profile_gradients(well)
        assert g1 + g2 == pytest.approx(0.0, abs=1e-12)
        assert g1 == pytest.approx(math.copysign(1.0, well)) and g2 == pytest.approx(-g1)
        left, right = (sum(profile(well + d)) for d in (-0.05, 0.05))
        assert left > sum(profile(well)) and right > sum(profile(well))  # a strict local minimum


def test_gradients_agree_in_sign_inside_the_unit_interval():
    for u in (-0.9, -0.3, 0.1, 0.6, 0.99):
        g1, g2 = profile_gradients(u)
        assert g1 * u > 0 and g2 * u > 0


def test_graddrop_moves_at_a_spurious_point_and_ew_does_not():
    task = SignConflict(dim=1, start=[2.0])
    model = task.build_model()
    z = model.trunk(None)
    grads = torch.stack([torch.autograd.grad(head(z), z)[0] for head in model.heads])  # [2, 1, 1]
    assert float(grads.sum()) == pytest.approx(0.0, abs=1e-6)
    assert float(get_method("ew", num_tasks=2).combine(grads).abs().sum()) == pytest.approx(0.0, abs=1e-6)
    ctx = StepContext(generator=torch.Generator().manual_seed(0), activation=z.detach(), level="feature")
    graddrop = get_method("graddrop", num_tasks=2)
    updates = {round(float(graddrop.combine(grads, ctx)), 4) for _ in range(20)}
    assert updates == {-1.0, 1.0}  # one loss's unit gradient or the other's


def test_starts_are_seeded_in_the_box():
    assert start_point(3, 4) == start_point(3, 4) != start_point(3, 5)
    points = torch.tensor([start_point(2, k) for k in range(50)])
    assert torch.all(points.abs() <= TERRACE_END)
    assert SignConflict(dim=2, start=[1, -2.5]).start == (1.0, -2.5)
    assert SignConflict(dim=3, start=7).start == start_point(3, 7)


def test_model_is_the_point_and_heads_are_the_losses():
    task = SignConflict(dim=2, start=[1.0, -2.0])
    model = task.build_model()
    assert model.shared_parameters() == [model.trunk.x]
    assert not any(True for _ in model.heads.parameters())
    batch = next(task.train_batches(None, torch.Generator()))
    expected = sign_conflict_losses(torch.tensor([1.0, -2.0]))
    torch.testing.assert_close(task.losses(model(None), batch), expected)


def test_evaluate_at_the_joint_minimum_and_at_a_well():
    task = SignConflict(dim=2, start=[0.0, 0.0])
    values = task.evaluate(task.build_model(), "train")
    assert {m.name for m in task.metrics()} <= set(values)
    assert values["joint_min"] == 1.0 and values["joint_distance"] == 0.0 and values["sum_grad_norm"] == 0.0
    task = SignConflict(dim=2, start=[0.0, -2.5])
    values = task.evaluate(task.build_model(), "train")
    assert values["joint_min"] == 0.0 and values["joint_distance"] == pytest.approx(2.5)
    assert values["sum_grad_norm"] < 1e-5 and (values["x1"], values["x2"]) == (0.0, -2.5)
    assert JOINT_TOLERANCE < 0.01


def test_landscape_only_in_the_plane():
    landscape = SignConflict(dim=2).landscape()
    assert landscape.pareto_set.tolist() == [[0.0, 0.0]]
    assert landscape.losses(torch.zeros(4, 2)).shape == (4, 2)
    assert SignConflict(dim=3).landscape() is None


@pytest.mark.parametrize(
    ("params", "argument"),
    [
        ({"dim": 0}, "dim"),
        ({"dim": True}, "dim"),
        ({"start": -1}, "start"),
        ({"start": [1.0]}, "start"),
        ({"start": [1.0, math.inf]}, "start"),
        ({"start": "ab"}, "start"),
    ],
)
def test_bad_parameters_name_the_argument(params, argument):
    with pytest.raises(ValueError, match=argument):
        SignConflict(**params)


@pytest.mark.parametrize("level", ["param", "feature"])
@pytest.mark.parametrize("method", ["ew", "graddrop", "mgda"])
def test_trains_at_both_levels(method, level):
    values = final_metrics(method, {"dim": 2, "start": [0.5, -0.4]}, steps=120, level=level)
    assert values["joint_min"] == 1.0  # inside the unit square every method descends to 0


@pytest.mark.slow
def test_ew_stalls_on_the_terrace_where_graddrop_reaches_the_joint_minimum():
    starts = range(6)  # in 1-D: starts 2, 3 and 5 land on the terrace
    ew = [final_metrics("ew", {"dim": 1, "start": k}, steps=300) for k in starts]
    graddrop = [final_metrics("graddrop", {"dim": 1, "start": k}, steps=300) for k in starts]
    stalled = [v for v in ew if v["joint_min"] == 0.0]
    assert len(stalled) >= 2
    assert all(v["sum_grad_norm"] < 1e-5 and v["joint_distance"] > 1 for v in stalled)  # float32 wells
    assert sum(v["joint_min"] for v in graddrop) > sum(v["joint_min"] for v in ew)
