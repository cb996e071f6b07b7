"""Per-task gradients at both levels against hand-computed values on the linear test task."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torch import Tensor

import tests.benchmark.noisy_task  # noqa: F401  (registers the "_noisy" task)
from benchmark import gradients
from benchmark.factored import FactoredGradients
from benchmark.gradients import (
    JacobianBuffer,
    backward_step,
    choose_strategy,
    jacobian,
    jacobian_through,
    side_effect_free,
)
from benchmark.method import Method, StepContext, get_method
from benchmark.registry import METHODS, TASKS
from benchmark.task import Batch, Task, get_task
from tests.benchmark.linear_task import HEADS, TRUNK, LinearTask
from tests.tasks.celeba_fixture import make_celeba
from tests.tasks.test_transfer import write_cifar10, write_cifar100

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


def test_auto_takes_the_loop_on_a_cpu_whatever_the_memory() -> None:
    assert choose_strategy(torch.device("cpu"), 0) == "loop"


@pytest.mark.parametrize(("needed", "choice"), [(10 << 20, "batched"), (60 << 20, "loop")])
def test_auto_takes_the_batched_call_only_where_it_fits(
    needed: int, choice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(gradients.PREFERRED_STRATEGY, "cpu", "batched")
    monkeypatch.setattr(gradients, "available_bytes", lambda device: 100 << 20)  # headroom 0.5: 50 MiB
    assert choose_strategy(torch.device("cpu"), needed) == choice


def test_free_cpu_memory_is_read_from_meminfo() -> None:
    free = gradients.available_bytes(torch.device("cpu"))
    assert 0 < free <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_batched_memory_estimate_is_t_times_saved_activations_and_one_gradient() -> None:
    weight = torch.nn.Parameter(torch.ones(3, 5))
    inputs = torch.ones(4, 5)  # the matmul saves them (80 bytes) for the weight's gradient (60 bytes)
    estimate = gradients.batched_bytes_estimate(lambda: (inputs @ weight.T).sum(), [weight], num_tasks=7)
    assert estimate == 7 * (80 + 60)


SHIPPED = [name for name in TASKS.names() if TASKS.get(name).__module__.startswith("tasks.")]
NO_DATA = [name for name in SHIPPED if not TASKS.get(name).needs_data]


def shipped_task(name: str, tmp_path: Path) -> Task:
    """A shipped task; the data-reading ones on small fixtures in their real formats."""
    if name.startswith("celeba"):
        make_celeba(tmp_path)
        model = name.split("-")[1]
        return get_task("celeba", tmp_path, model=model, image_size=16, attributes=["Bald", "Male"])
    if name == "transfer":
        write_cifar100(tmp_path)
        write_cifar10(tmp_path)
        small = {"width": 4, "blocks": 1, "val_fraction": 0.25, "source_eval_size": 2}
        return get_task("transfer", tmp_path, source="cifar10", **small)
    return get_task(name)


def test_every_shipped_task_is_checked() -> None:
    assert {*NO_DATA, "celeba", "transfer"} == set(SHIPPED) and "digits" in NO_DATA


SLOW = [pytest.param(n, marks=pytest.mark.slow) for n in ("celeba-famo_cnn", "celeba-resnet18", "transfer")]


@pytest.mark.parametrize("name", [*NO_DATA, *SLOW])
def test_jacobian_through_z_is_bit_identical_to_the_direct_one_on_every_shipped_task(
    name: str, tmp_path: Path
) -> None:
    """The engine's Jacobian (per-task gradients at z, then the trunk alone) equals each row
    back-propagated from its loss through every head, for both strategies, with and without a buffer."""
    task = shipped_task(name, tmp_path)
    torch.manual_seed(0)
    model = task.build_model().eval()  # BatchNorm in eval mode: both forwards see the same statistics
    batch = next(task.train_batches(8, torch.Generator().manual_seed(0)))
    shared = model.shared_parameters()
    direct = jacobian(task.losses(model(batch.inputs), batch), shared, "loop")
    z = model.trunk(batch.inputs)
    aliases = [z.detach().requires_grad_() for _ in range(task.num_tasks)]
    z_grads = torch.autograd.grad(task.losses(model.forward_each(aliases), batch).sum(), aliases)
    buffer = torch.full_like(direct, math.nan)
    for strategy in ("loop", "batched"):
        assert torch.equal(jacobian_through(z, z_grads, shared, strategy), direct), strategy
        assert jacobian_through(z, z_grads, shared, strategy, out=buffer) is buffer
        assert torch.equal(buffer, direct), strategy


ONE_OUTPUT_HEADS = ("digits", "celeba-famo_cnn", "celeba-resnet18")


@pytest.mark.parametrize("name", [*NO_DATA, *SLOW])
def test_the_engines_gradients_at_z_are_bit_identical_to_the_aliases_on_every_shipped_task(
    name: str, tmp_path: Path
) -> None:
    """Heads of one output each (digits, celeba) give their gradients at z from their factors, one
    product per entry: the same bits as each head's own backward into its alias of z; heads without
    factors, or with several outputs, keep the aliases. The heads' gradients are the same bits too."""
    task = shipped_task(name, tmp_path)
    torch.manual_seed(0)
    model = task.build_model().eval()
    batch = next(task.train_batches(8, torch.Generator().manual_seed(0)))
    z = model.trunk(batch.inputs)
    aliases = [z.detach().requires_grad_() for _ in range(task.num_tasks)]
    task.losses(model.forward_each(aliases), batch).sum().backward()
    expected = torch.stack([a.grad if a.grad is not None else torch.zeros_like(a) for a in aliases])
    expected_heads = [p.grad.clone() for p in model.heads.parameters()]
    model.zero_grad(set_to_none=True)
    z_grads = gradients.z_gradients(model, task, batch, batch, StepContext(), z, set_head_grads=True)
    factored = isinstance(z_grads, FactoredGradients)
    weights = model.linear_head_weights()
    assert factored == (weights is not None and weights.shape[1] == 1) == (name in ONE_OUTPUT_HEADS)
    assert torch.equal(z_grads.dense() if factored else torch.stack(z_grads), expected)
    for grad, expected_grad in zip((p.grad for p in model.heads.parameters()), expected_heads, strict=True):
        assert torch.equal(grad, expected_grad)


def test_the_step_reuses_one_jacobian_buffer_and_matches_a_step_without_it() -> None:
    task = LinearTask(3)
    buffer, seen = JacobianBuffer(), []
    for _ in range(2):
        method = Capture(3)
        method.combine = lambda grads, ctx=None, m=method: seen.append(grads) or Capture.combine(m, grads)
        backward_step(task.build_model(), task, Batch(X), method, StepContext(), buffer=buffer)
    assert seen[0] is seen[1]
    torch.testing.assert_close(seen[1], expected_param_jacobian(3))


@pytest.mark.parametrize("name", METHODS.names())
def test_methods_copy_what_they_keep_of_a_reused_buffer(name: str) -> None:
    """Two steps on one buffer overwritten in between give the updates of two steps on fresh tensors."""
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(2, 3, 6, generator=generator)
    losses = torch.tensor([0.7, 1.3, 0.9])

    def updates(reuse: bool) -> list[Tensor]:
        method = get_method(name, num_tasks=3)
        buffers, rng, out = torch.empty(2, 3, 6), torch.Generator().manual_seed(1), []
        for step, grads in enumerate((first, second)):
            matrix, extra = (buffers[0].copy_(grads), buffers[1].copy_(grads.flip(0))) if reuse else (
                grads.clone(), grads.flip(0)
            )
            extra = extra if method.batches_per_step > 1 else None
            ctx = StepContext(losses=losses, step=step, generator=rng, extra_grads=extra)
            with torch.no_grad():
                out.append(method.combine(matrix, ctx).clone())
        return out

    fresh, reused = updates(reuse=False), updates(reuse=True)
    for a, b in zip(fresh, reused, strict=True):
        assert torch.equal(a, b)


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


class CaptureFactored(Method):
    """Records the factors the engine hands over and returns their plain sum."""

    accepts_factored = True

    def combine(self, grads: FactoredGradients, ctx: StepContext | None = None) -> Tensor:
        self.grads, self.ctx = grads, ctx
        return grads.weighted_sum(torch.ones(self.num_tasks))


def _factored_step(
    task_name: str, method: Method, factored: bool, batched: bool = False, level: str = "feature", **params
) -> tuple[dict[str, Tensor], Tensor, list]:
    """One step from a seeded model: every parameter's gradient, the losses, what ``observe`` saw."""
    task = get_task(task_name, **params)
    torch.manual_seed(0)
    model = task.build_model()
    if batched:
        model.batch_heads()
    batch = next(task.train_batches(16, torch.Generator().manual_seed(0)))
    seen: list = []
    ctx = StepContext(level=level, generator=torch.Generator().manual_seed(1))
    losses = backward_step(model, task, batch, method, ctx, observe=seen.append, factored=factored)
    return {n: p.grad for n, p in model.named_parameters()}, losses, seen


FACTORED_TASKS = {"digits": {"hidden": 16}, "multi_digits": {"hidden": 16}}  # heads of 1 and of 10 outputs


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("task_name", FACTORED_TASKS)
@pytest.mark.parametrize("name", ["graddrop", "mgda", "upgrad", "trimmed_mean"])
def test_factored_heads_give_the_dense_step(name: str, task_name: str, batched: bool) -> None:
    """Heads linear in z (separate or stacked, one output or ten): the same losses and, to rounding,
    the same gradient on every parameter as the dense per-task gradients; a method that does not
    accept factors (trimmed_mean) gets them dense, and so does ``observe``."""
    params = FACTORED_TASKS[task_name]
    num_tasks = get_task(task_name, **params).num_tasks
    dense_grads, dense_losses, dense_seen = _factored_step(
        task_name, get_method(name, num_tasks), False, batched, **params
    )
    grads, losses, seen = _factored_step(task_name, get_method(name, num_tasks), True, batched, **params)
    assert torch.equal(losses, dense_losses)
    assert grads.keys() == dense_grads.keys()
    for key, value in dense_grads.items():
        torch.testing.assert_close(grads[key], value, rtol=1e-4, atol=1e-6, msg=key)
    assert isinstance(seen[0], Tensor)
    torch.testing.assert_close(seen[0], dense_seen[0], rtol=1e-4, atol=1e-7)


def test_methods_that_accept_factors_receive_them_with_the_activation() -> None:
    num_tasks = get_task("digits").num_tasks
    method = CaptureFactored(num_tasks)
    _factored_step("digits", method, True, hidden=16)
    reference = Capture(num_tasks)
    _factored_step("digits", reference, False, hidden=16)
    assert isinstance(method.grads, FactoredGradients) and method.grads.rank_one
    torch.testing.assert_close(method.grads.dense(), reference.grads)
    assert torch.equal(method.ctx.activation, reference.ctx.activation)


@pytest.mark.parametrize(("name", "level"), [("ew", "feature"), ("uw", "feature"), ("graddrop", "param")])
def test_factored_heads_change_nothing_where_they_do_not_apply(name: str, level: str) -> None:
    """Loss weightings take one backward, the param level its Jacobian: bit for bit as without."""
    num_tasks = get_task("digits").num_tasks
    runs = [
        _factored_step("digits", get_method(name, num_tasks), factored, level=level, hidden=16)
        for factored in (False, True)
    ]
    for key, value in runs[0][0].items():
        assert torch.equal(runs[1][0][key], value), key


def test_factored_heads_need_linear_heads() -> None:
    task, method = LinearTask(2), get_method("graddrop", 2)
    with pytest.raises(ValueError, match="factored_heads: the model's heads are not LinearHeads of one"):
        backward_step(task.build_model(), task, Batch(X), method, StepContext(level="feature"), factored=True)
