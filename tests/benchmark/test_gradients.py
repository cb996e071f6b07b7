"""Per-task gradients at both levels against hand-computed values on the linear test task."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import tests.benchmark.noisy_task  # noqa: F401  (registers the "_noisy" task)
from benchmark.gradients import backward_step, choose_strategy, jacobian, side_effect_free
from benchmark.method import Method, StepContext, get_method
from benchmark.task import Batch, get_task
from tests.benchmark.linear_task import HEADS, TRUNK, LinearTask

X = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 4.0]])  # batch of 3; mean (4/3, 5/3)
X_MEAN = X.mean(0)


class Capture(Method):
    """Records what the engine hands over and returns the plain sum."""

    def combine(self, grads: Tensor, ctx: StepContext | None = None) -> Tensor:
        self.grads, self.ctx = grads.clone(), ctx
        return grads.sum(0)


def step(method: Method, level: str, strategy: str = "loop", num_tasks: int = 2):
    task = LinearTask(num_tasks)
    model = task.build_model()
    losses = backward_step(model, task, Batch(X), method, StepContext(level=level), strategy)
    return model, losses


def expected_param_jacobian(num_tasks: int) -> Tensor:
    return torch.stack([torch.outer(HEADS[i], X_MEAN).flatten() for i in range(num_tasks)])


@pytest.mark.parametrize("strategy", ["loop", "batched"])
def test_param_level_jacobian_and_update(strategy: str) -> None:
    method = Capture(3)
    model, losses = step(method, "param", strategy, num_tasks=3)
    torch.testing.assert_close(method.grads, expected_param_jacobian(3))
    torch.testing.assert_close(model.trunk.weight.grad, expected_param_jacobian(3).sum(0).view(2, 2))
    z_mean = TRUNK @ X_MEAN
    for head in model.heads:  # each head gets its own loss's gradient only
        torch.testing.assert_close(head.weight.grad, z_mean.view(1, 2))
    torch.testing.assert_close(losses, HEADS @ z_mean)
    assert method.ctx.level == "param"
    torch.testing.assert_close(method.ctx.losses, losses)


@pytest.mark.parametrize("strategy", ["loop", "batched"])
def test_feature_level_gradients_and_trunk_backward(strategy: str) -> None:
    method = Capture(2)
    model, _ = step(method, "feature", strategy)
    expected = HEADS[:2, None, :].expand(2, 3, 2) / 3  # dL_i/dz: a_i / B on every row
    torch.testing.assert_close(method.grads, expected)
    torch.testing.assert_close(method.ctx.activation, X @ TRUNK.T)
    # the update sum_i a_i / B on each row, back through z = W x: dW = sum_b u_b x_b^T
    torch.testing.assert_close(model.trunk.weight.grad, expected_param_jacobian(2).sum(0).view(2, 2))


@pytest.mark.parametrize("level", ["param", "feature"])
def test_loss_weighting_takes_one_backward_with_weighted_heads(level: str) -> None:
    model, _ = step(get_method("fixed", num_tasks=2, weights=[2.0, -0.5]), level)
    expected = 2.0 * torch.outer(HEADS[0], X_MEAN) - 0.5 * torch.outer(HEADS[1], X_MEAN)
    torch.testing.assert_close(model.trunk.weight.grad, expected)
    z_mean = TRUNK @ X_MEAN
    torch.testing.assert_close(model.heads[0].weight.grad, 2.0 * z_mean.view(1, 2))
    torch.testing.assert_close(model.heads[1].weight.grad, -0.5 * z_mean.view(1, 2))


@pytest.mark.parametrize("level", ["param", "feature"])
def test_graddrop_leaves_the_forward_pass_unchanged(level: str) -> None:
    """GradDrop acts in the backward pass only: losses and outputs equal plain equal weighting's."""
    _, with_graddrop = step(get_method("graddrop", num_tasks=2), level)
    _, with_ew = step(get_method("ew", num_tasks=2), level)
    torch.testing.assert_close(with_graddrop, with_ew)
    torch.testing.assert_close(with_ew, HEADS[:2] @ (TRUNK @ X_MEAN))


@pytest.mark.parametrize(
    ("loop_ms", "batched_ms", "choice"), [(10.0, 2.0, "batched"), (10.0, 9.0, "loop"), (2.0, 10.0, "loop")]
)
def test_choose_strategy_takes_batched_only_when_clearly_faster(
    loop_ms: float, batched_ms: float, choice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [0.0]
    monkeypatch.setattr("benchmark.gradients.time.perf_counter", lambda: clock[0])
    calls: list[str] = []

    def probe(strategy: str) -> None:  # a fake clock advanced by each strategy's cost
        calls.append(strategy)
        clock[0] += (loop_ms if strategy == "loop" else batched_ms) / 1e3

    picked, times = choose_strategy(probe, repeats=2)
    assert picked == choice
    assert times == pytest.approx({"loop": loop_ms, "batched": batched_ms})
    assert calls.count("loop") == calls.count("batched") == 3  # warm-up + repeats


def test_choose_strategy_falls_back_to_the_loop_when_batching_fails() -> None:
    def probe(strategy: str) -> None:
        if strategy == "batched":
            raise RuntimeError("no batching rule")

    assert choose_strategy(probe)[0] == "loop"


@pytest.mark.parametrize("task_name", ["toy2d", "digits"])
def test_loop_and_batched_jacobians_are_bit_identical_on_the_shipped_tasks(task_name: str) -> None:
    """``jacobian: auto`` picks a strategy by timing; results must not depend on which it picks."""
    task = get_task(task_name)
    torch.manual_seed(0)
    model = task.build_model()
    batch = next(task.train_batches(32, torch.Generator().manual_seed(0)))
    loop, batched = (
        jacobian(task.losses(model(batch.inputs), batch), model.shared_parameters(), strategy)
        for strategy in ("loop", "batched")
    )
    assert torch.equal(loop, batched)


def test_side_effect_free_forwards_leave_batchnorm_statistics_and_rng_streams_as_they_were() -> None:
    torch.manual_seed(0)
    task = get_task("_noisy")
    model = task.build_model()
    batch = Batch(torch.randn(8, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with side_effect_free(model):
        for strategy in ("loop", "batched"):
            jacobian(task.losses(model(batch.inputs), batch), model.shared_parameters(), strategy)
        with torch.no_grad():
            task.losses(model(batch.inputs), batch)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    model(batch.inputs)  # the same forward outside moves the statistics: the check above can fail
    assert not torch.equal(before["trunk.1.running_mean"], model.state_dict()["trunk.1.running_mean"])
