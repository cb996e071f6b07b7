"""One run end to end on the linear test task: determinism, statuses, timings, optimisers, schedules."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import Tensor

import tests.benchmark.linear_task
import tests.benchmark.noisy_task  # noqa: F401  (registers the "_noisy" task)
from benchmark.config import ConfigError, parse_suite
from benchmark.specs import RunSpec, TrainSpec
from benchmark.trainer import Trainer, make_scheduler, run


def spec(
    method: str = "graddrop", task_params: dict | None = None, seed: int = 0, task: str = "_linear", **train
) -> RunSpec:
    raw = {
        "seeds": [seed],
        "train": {"jacobian": "loop", **train},
        "tasks": [{"name": task, "params": task_params or {}}],
        "methods": [method],
    }
    return parse_suite(raw).runs[0]


def values(result) -> list[tuple]:
    return [(r.step, r.split, r.name, r.value) for r in result.metrics]


def test_same_seed_gives_identical_metrics_and_another_seed_does_not() -> None:
    first, again, other = run(spec()), run(spec()), run(spec(seed=1))
    assert first.status == "ok", first.error
    assert values(first) == values(again)
    assert values(first) != values(other)


def test_metrics_are_recorded_at_every_evaluation_with_train_losses() -> None:
    result = run(spec("ew", steps=6, eval_every=4))
    steps = sorted({r.step for r in result.metrics if r.split == "val"})
    assert steps == [0, 4, 6]
    losses = [r for r in result.metrics if r.split == "train_loss"]
    assert {(r.step, r.name) for r in losses} == {(4, "t0"), (4, "t1"), (6, "t0"), (6, "t1")}
    assert {"step_ms_mean", "step_ms_median", "train_s", "eval_s"} <= set(result.timings)
    assert result.ended >= result.started > 0


def test_auto_jacobian_strategy_and_its_memory_estimate_are_recorded() -> None:
    result = run(spec("pcgrad", jacobian="auto"))
    assert result.status == "ok", result.error
    assert result.timings["jacobian_batched"] == 0.0  # the loop on a CPU
    assert result.timings["jacobian_batched_mib"] > 0


def test_weighting_methods_skip_the_strategy_probe() -> None:
    assert "jacobian_batched" not in run(spec("ew", jacobian="auto")).timings


def test_exploding_run_is_recorded_as_diverged() -> None:
    result = run(spec("ew", optimizer="sgd", lr=1e15, steps=60, eval_every=5))
    assert result.status == "diverged"
    assert "non-finite" in result.error
    assert max(r.step for r in result.metrics) < 60


def test_an_exception_is_recorded_as_failed_with_its_traceback() -> None:
    result = run(spec("ew", task_params={"fail": False}, steps=2, eval_every=1))
    assert result.status == "ok"
    broken = replace(result.spec, task=replace(result.spec.task, params={"fail": True}))
    failed = run(broken)
    assert failed.status == "failed"
    assert "RuntimeError: this task was asked to fail" in failed.error


def test_gradient_clipping_bounds_the_step() -> None:
    trainer = Trainer(spec("ew", optimizer="sgd", lr=1.0, clip_grad_norm=1e-3))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    batch = next(trainer.task.train_batches(4, torch.Generator().manual_seed(0)))
    trainer._step(batch, 0, "loop")
    moved = torch.cat(
        [(p.detach() - b).flatten() for p, b in zip(trainer.model.parameters(), before, strict=True)]
    )
    assert 0 < moved.norm() <= 1e-3 * (1 + 1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_optimizers(optimizer: str) -> None:
    assert run(spec("ew", optimizer=optimizer, momentum=0.9 if optimizer == "sgd" else 0.0)).status == "ok"


def lr_factors(**train) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = make_scheduler(opt, TrainSpec(**train))
    factors = []
    for _ in range(train["steps"]):
        factors.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return factors


def test_schedules() -> None:
    assert lr_factors(steps=3) == [1.0, 1.0, 1.0]
    cosine = lr_factors(steps=4, schedule="cosine")
    assert cosine[0] == 1.0 and math.isclose(cosine[2], 0.5)
    assert lr_factors(steps=5, schedule="step", lr_step_size=2, lr_gamma=0.5) == [1, 1, 0.5, 0.5, 0.25]
    assert lr_factors(steps=3, warmup_steps=2) == [0.5, 1.0, 1.0]


LEARNABLE_PLUGIN = '''
import torch
from torch import nn
from benchmark.method import WeightingMethod
from benchmark.registry import METHODS


@METHODS.register("trainer_test_learnable")
class Learnable(WeightingMethod):
    """Softmax weights of a learnable logit vector, pulled towards the larger loss."""

    def __init__(self, num_tasks):
        super().__init__(num_tasks)
        self.logits = nn.Parameter(torch.zeros(num_tasks))

    def weights(self, losses, ctx=None):
        with torch.enable_grad():
            w = torch.softmax(self.logits, 0)
            (-(w * losses).sum()).backward()
        return w.detach() * self.num_tasks
'''


def test_learnable_method_parameters_are_trained_by_their_own_optimizer(tmp_path) -> None:
    plugin = tmp_path / "learnable_plugin.py"
    plugin.write_text(LEARNABLE_PLUGIN)
    raw = {
        "plugins": [str(plugin)],
        "train": {"steps": 5, "eval_every": 5, "method_lr": 0.5},
        "tasks": [{"name": "_linear"}],
        "methods": ["trainer_test_learnable"],
    }
    trainer = Trainer(parse_suite(raw).runs[0])
    assert trainer.method_optimizer is not None
    assert trainer.method_optimizer.param_groups[0]["lr"] == 0.5
    assert trainer.train().status == "ok"
    assert trainer.method.logits.abs().sum() > 0  # moved from zero by its optimiser


RECORDING_PLUGIN = '''
from benchmark.method import Method
from benchmark.registry import METHODS


@METHODS.register("trainer_test_recording")
class Recording(Method):
    """The plain sum; records what the trainer hands it."""

    batches_per_step = 2
    needs_losses_after_step = True

    def __init__(self, num_tasks):
        super().__init__(num_tasks)
        self.seen, self.after = [], []

    def combine(self, grads, ctx=None):
        extra = None if ctx.extra_grads is None else ctx.extra_grads.clone()
        self.seen.append((ctx.step, ctx.epoch, grads.clone(), extra, ctx.losses.clone()))
        return grads.sum(0)

    def losses_after_step(self, losses):
        self.after.append(losses.clone())
'''


@pytest.fixture(scope="module")
def recording_plugin(tmp_path_factory: pytest.TempPathFactory):
    """One file for every parameter: the same name registered from two files is a clash."""
    plugin = tmp_path_factory.mktemp("plugins") / "recording_plugin.py"
    plugin.write_text(RECORDING_PLUGIN)
    return plugin


@pytest.mark.parametrize("level", ["param", "feature"])
def test_trainer_supplies_epochs_a_second_batch_and_the_losses_after_each_step(
    recording_plugin, level
) -> None:
    plugin = recording_plugin
    raw = {
        "plugins": [str(plugin)],
        "train": {"steps": 3, "eval_every": 3, "level": level, "jacobian": "loop"},
        "tasks": [{"name": "_linear"}],
        "methods": ["trainer_test_recording"],
    }
    trainer = Trainer(parse_suite(raw).runs[0])
    assert trainer.train().status == "ok"
    seen = trainer.method.seen
    assert [(step, epoch) for step, epoch, *_ in seen] == [(0, 0), (1, 1), (2, 2)]  # one step per epoch
    for _, _, grads, extra, _ in seen:
        if level == "feature":  # no second batch: feature gradients of two batches do not pair up
            assert extra is None
        else:  # the same T x P Jacobian shape, from another batch
            assert extra.shape == grads.shape and not torch.equal(extra, grads)
    assert len(trainer.method.after) == 3
    for (*_, before), after in zip(seen, trainer.method.after, strict=True):
        assert after.shape == before.shape and not torch.equal(after, before)  # same batch, moved model


def test_method_learning_rate_defaults_to_the_method_own_then_the_suite_wins() -> None:
    def method_lr(**train) -> float:
        raw = {"train": {"steps": 1, **train}, "tasks": [{"name": "_linear"}], "methods": ["famo"]}
        return Trainer(parse_suite(raw).runs[0]).method_optimizer.param_groups[0]["lr"]

    assert method_lr(lr=0.5) == 0.025  # FAMO's ξ learning rate from its paper
    assert method_lr(lr=0.5, method_lr=0.1) == 0.1


def test_the_auto_strategy_probe_changes_no_result_on_a_batchnorm_dropout_model() -> None:
    auto = run(spec("mgda", task="_noisy", jacobian="auto"))  # probes the memory, then takes the loop
    loop = run(spec("mgda", task="_noisy", jacobian="loop"))
    assert auto.status == loop.status == "ok", auto.error
    assert "jacobian_batched_mib" in auto.timings
    assert values(auto) == values(loop)


def test_losses_after_the_step_leave_batchnorm_statistics_and_rng_as_they_were() -> None:
    def one_step(after_step: bool) -> tuple[dict, Tensor]:
        trainer = Trainer(spec("famo", task="_noisy"))
        trainer.method.needs_losses_after_step = after_step
        batch = next(trainer.task.train_batches(8, trainer.data_generator))
        trainer._step(batch, 0, "loop")
        return {k: v.clone() for k, v in trainer.model.state_dict().items()}, torch.get_rng_state()

    (state, rng), (without_state, without_rng) = one_step(True), one_step(False)
    assert state.keys() == without_state.keys()
    assert all(torch.equal(state[k], without_state[k]) for k in state)
    assert torch.equal(rng, without_rng)


def digits_run(method: str = "graddrop", **train: object) -> RunSpec:
    raw = {
        "train": {"steps": 6, "eval_every": 3, "batch_size": 32, "jacobian": "loop", **train},
        "tasks": [{"name": "digits", "params": {"hidden": 8, "attributes": ["even", "ge5", "prime"]}}],
        "methods": [method],
    }
    return parse_suite(raw).runs[0]


SGD = {"optimizer": "sgd", "momentum": 0.9}


@pytest.mark.parametrize(
    ("method", "base", "setting"),
    [
        ("graddrop", {}, {"batched_heads": True}),
        ("mgda", {"level": "param"}, {"batched_heads": True}),
        ("mgda", {"level": "feature"}, {"batched_heads": True}),
        ("ew", {}, {"batched_heads": True}),
        ("graddrop", {}, {"factored_heads": True}),
        ("graddrop", {}, {"factored_heads": True, "batched_heads": True}),
        ("mgda", {"level": "feature"}, {"factored_heads": True}),
        ("ew", {}, {"optimizer_impl": "foreach"}),
        ("ew", {}, {"optimizer_impl": "fused"}),
        ("ew", SGD, {"optimizer_impl": "fused"}),
    ],
)
def test_execution_settings_give_the_same_metrics_to_float_tolerance(
    method: str, base: dict, setting: dict
) -> None:
    plain, other = run(digits_run(method, **base)), run(digits_run(method, **base, **setting))
    assert other.status == plain.status == "ok", other.error
    assert [r[:3] for r in values(other)] == [r[:3] for r in values(plain)]
    assert [r[3] for r in values(other)] == pytest.approx([r[3] for r in values(plain)], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize(
    "setting",
    [{"batched_heads": True}, {"optimizer_impl": "fused"}, {"factored_heads": True}, {"amp": "bf16"}],
)
def test_result_changing_settings_enter_the_run_identity(setting: dict) -> None:
    assert digits_run(**setting).config_hash() != digits_run().config_hash()


def test_default_execution_settings_leave_the_config_hash_as_it_was() -> None:
    explicit = digits_run(batched_heads=False, optimizer_impl="default", factored_heads=False, amp=None)
    assert explicit.config_hash() == digits_run().config_hash()


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"batched_heads": True}, r"batched_heads: true, but task '_linear' does not declare linear_heads"),
        ({"factored_heads": True}, r"factored_heads: true, but task '_linear' does not declare linear_heads"),
        ({"factored_heads": "yes"}, r"train.factored_heads: expected bool, got 'yes'"),
        ({"optimizer_impl": "fused", "device": "meta"}, r"'fused' has no kernels on device 'meta'"),
        ({"optimizer_impl": "fast"}, r"train.optimizer_impl: got 'fast'; expected one of default, foreach"),
        ({"amp": "fp8"}, r"train.amp: got 'fp8'; expected one of None, bf16, fp16"),
    ],
)
def test_invalid_execution_settings_fail_at_load(train: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        spec("ew", **train)
