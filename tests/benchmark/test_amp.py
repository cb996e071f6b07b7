"""Mixed precision: the autocast trunk, fp16's gradient scale, and bf16 training of every method."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmark.amp import AutocastTrunk, GradScale
from benchmark.config import parse_suite
from benchmark.registry import METHODS
from benchmark.task import LinearHead, MultiTaskModel
from benchmark.trainer import Trainer, run

THIRD = 1 / 3  # not representable in bfloat16: its rounding shows where the trunk ran


def unit_trunk(weight: float, dtype: torch.dtype, scale: GradScale | None = None) -> AutocastTrunk:
    linear = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        linear.weight.fill_(weight)
    return AutocastTrunk(linear, "cpu", dtype, scale)


def test_trunk_runs_in_bfloat16_and_returns_float32() -> None:
    z = unit_trunk(THIRD, torch.bfloat16)(torch.ones(1, 1))
    assert z.dtype == torch.float32
    assert z.item() == torch.tensor(THIRD).to(torch.bfloat16).item() != pytest.approx(THIRD, abs=1e-6)


def test_fp16_gradient_below_the_half_range_survives_the_scale() -> None:
    """dL/dz = 1e-8 is below float16's smallest subnormal (6e-8): unscaled it flushes to zero; with
    the scale 2**16 the weight's gradient is 1e-8 (x = 1), as in float32."""
    x = torch.ones(1, 1)
    unscaled, scaled = unit_trunk(1.0, torch.float16), unit_trunk(1.0, torch.float16, GradScale())
    (1e-8 * unscaled(x)).sum().backward()
    (1e-8 * scaled(x)).sum().backward()
    assert unscaled.module.weight.grad.item() == 0.0
    assert scaled.module.weight.grad.item() == pytest.approx(1e-8, rel=1e-3)


def test_scaled_gradients_are_unscaled_in_autograd_grad_too() -> None:
    """The param-level Jacobian is taken with ``autograd.grad``: the scale must not leak into it."""
    trunk = unit_trunk(2.0, torch.float16, GradScale())
    loss = (0.25 * trunk(torch.full((1, 1), 2.0))).sum()
    (grad,) = torch.autograd.grad(loss, [trunk.module.weight])
    assert grad.item() == 0.5  # d(0.25 w x)/dw = 0.25 x: 2**15 in float16 at the scale 2**16


def test_grad_scale_backs_off_on_overflow_and_grows_after_an_interval() -> None:
    scale = GradScale(init=8.0, interval=2)
    weight = nn.Parameter(torch.zeros(2))
    weight.grad = torch.tensor([1.0, math.inf])
    assert not scale.update([weight]) and scale.value == 4.0
    weight.grad = torch.tensor([1.0, 2.0])
    assert scale.update([weight]) and scale.value == 4.0
    assert scale.update([weight]) and scale.value == 8.0


def test_model_autocast_wraps_the_trunk_and_rejects_an_unknown_mode() -> None:
    model = MultiTaskModel(nn.Linear(2, 3), [LinearHead(3, 1)])
    assert model.autocast("bf16") is None and isinstance(model.trunk, AutocastTrunk)
    assert model.shared_parameters() == [model.trunk.module.weight, model.trunk.module.bias]
    assert isinstance(MultiTaskModel(nn.Linear(2, 3), []).autocast("fp16"), GradScale)
    with pytest.raises(ValueError, match="'fp8'"):
        model.autocast("fp8")


def digits_spec(method: str, **train: object):
    raw = {
        "train": {"steps": 2, "eval_every": 2, "batch_size": 32, "jacobian": "loop", **train},
        "tasks": [{"name": "digits", "params": {"hidden": 8, "attributes": ["even", "ge5", "prime"]}}],
        "methods": [method],
    }
    return parse_suite(raw).runs[0]


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_bf16_steps_to_finite_float32_parameters(name: str) -> None:
    trainer = Trainer(digits_spec(name, amp="bf16"))
    result = trainer.train()
    assert result.status == "ok", result.error
    assert all(p.dtype == torch.float32 and p.isfinite().all() for p in trainer.model.parameters())


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("name", ["graddrop", "mgda"])
def test_factored_heads_under_mixed_precision_train_close_to_the_dense_gradients(name: str, amp: str) -> None:
    """The heads' factors are float32 (the heads run outside autocast) while z is not: the update goes
    back through the reduced-precision trunk as the dense one does."""
    dense, factored = (
        run(digits_spec(name, amp=amp, level="feature", factored_heads=f)) for f in (False, True)
    )
    assert dense.status == factored.status == "ok", factored.error
    bce = [[r.value for r in res.metrics if r.name == "bce"] for res in (dense, factored)]
    assert bce[1] == pytest.approx(bce[0], rel=0.02)


def test_fp16_overflow_skips_the_step_and_halves_the_scale() -> None:
    trainer = Trainer(digits_spec("mgda", amp="fp16", level="feature"))
    trainer.grad_scale.value = 1e30  # any gradient overflows float16
    before = [p.detach().clone() for p in trainer.model.parameters()]
    batch = next(trainer.task.train_batches(32, trainer.data_generator))
    trainer._step(batch, 0, "loop")
    assert trainer.grad_scale.value == 5e29
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_bf16_results_differ_from_float32_and_are_reproducible() -> None:
    def f1(**train: object) -> list[float]:
        return [r.value for r in run(digits_spec("graddrop", **train)).metrics if r.name == "f1"]

    assert f1(amp="bf16") == f1(amp="bf16") != f1()


NO_CUDA = not torch.cuda.is_available()


@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize(("method", "level"), [("graddrop", "feature"), ("mgda", "param"), ("ew", None)])
def test_cuda_mixed_precision_steps_are_close_to_float32(method: str, level: str | None, amp: str) -> None:
    full = run(digits_spec(method, device="cuda", level=level, optimizer_impl="fused"))
    mixed = run(digits_spec(method, device="cuda", level=level, optimizer_impl="fused", amp=amp))
    assert mixed.status == full.status == "ok", mixed.error
    bce = [[r.value for r in res.metrics if r.name == "bce"] for res in (full, mixed)]
    assert bce[1] == pytest.approx(bce[0], rel=0.05)


@pytest.mark.cuda
@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("setting", [{"batched_heads": True}, {"factored_heads": True}])
def test_cuda_speed_settings_match_the_defaults(setting: dict) -> None:
    plain = run(digits_spec("graddrop", device="cuda", level="feature"))
    other = run(digits_spec("graddrop", device="cuda", level="feature", **setting))
    assert other.status == plain.status == "ok", other.error
    assert [r.value for r in other.metrics] == pytest.approx([r.value for r in plain.metrics], rel=1e-4)
