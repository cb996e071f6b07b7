"""Properties every registered method must have, with its default hyperparameters, and the ones a
method claims through its flags (``permutation_invariant``, ``linear_under_scaling``, ``non_conflicting``).

Parametrised over ``METHODS.names()``: a new plugin in ``methods/`` is checked here with no edits.
Every check builds a fresh method, so stateful methods are tested from their first step.
"""

from __future__ import annotations

import inspect
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from torch import Tensor

from benchmark.factored import FactoredGradients
from benchmark.method import LEVELS, Method, StepContext, get_method
from benchmark.registry import METHODS

NAMES = METHODS.names()
SCALES = [0.0, 1e-10, 1.0, 1e5, 1e15]
DTYPES = [torch.float32, torch.float64]
T = 4


def sample_grads(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def make_ctx(num_tasks: int, dtype: torch.dtype, seed: int = 0, **fields: object) -> StepContext:
    """A full context: positive losses and a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    losses = torch.rand(num_tasks, generator=generator, dtype=dtype) + 0.5
    return StepContext(losses=losses, generator=generator, **fields)


def build(name: str, num_tasks: int = T) -> Method:
    return get_method(name, num_tasks=num_tasks)


def claiming(flag: str) -> list[str]:
    return [n for n in NAMES if getattr(METHODS.get(n), flag)]


def update_of(name: str, grads: Tensor, seed: int = 0, losses: Tensor | None = None) -> Tensor:
    """The first update of a fresh method, with a full context (``losses`` replaces the random ones)."""
    ctx = make_ctx(grads.shape[0], grads.dtype, seed)
    if losses is not None:
        ctx.losses = losses
    return build(name, grads.shape[0]).combine(grads, ctx)


def degenerate_matrices(dtype: torch.dtype) -> dict[str, Tensor]:
    """Gradients at which solvers divide by zero or invert singular systems."""
    row, matrix = sample_grads(7, dtype=dtype), sample_grads(T, 7, dtype=dtype, seed=1)
    return {
        "opposite": torch.stack([row, -row]),
        "opposite_pairs": torch.stack([row, -row, row, -row]),
        "opposite_scaled": torch.stack([row, -3 * row, 2 * row]),
        "identical": row.repeat(T, 1),
        "zero": torch.zeros(T, 7, dtype=dtype),
        "tiny_1e-30": matrix * 1e-30,
        "tiny_1e-40": matrix * 1e-40,  # subnormal in float32
        "opposite_tiny_1e-40": torch.stack([row, -row]) * 1e-40,
    }


DEGENERATE = list(degenerate_matrices(torch.float64))


def run_steps(method: Method, generator_seed: int | None, global_seed: int, steps: int = 7) -> list[Tensor]:
    """The updates of ``method`` over one fixed sequence of gradients, second-batch gradients, losses and
    epochs, as the trainer runs it: losses after each step for methods that want them, and an SGD step
    of the method's own parameters. Randomness: ``ctx.generator`` seeded with ``generator_seed`` (``None``:
    no generator) and torch's global RNG with ``global_seed``, restored afterwards."""
    parameters = list(method.parameters())
    optimizer = torch.optim.SGD(parameters, lr=0.1) if parameters else None
    updates = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(global_seed)
        generator = None if generator_seed is None else torch.Generator().manual_seed(generator_seed)
        for step in range(steps):
            losses = torch.rand(T, generator=torch.Generator().manual_seed(step), dtype=torch.float64) + 0.5
            extra = sample_grads(T, 7, seed=100 + step) if method.batches_per_step == 2 else None
            ctx = StepContext(losses=losses, step=step, generator=generator, epoch=step, extra_grads=extra)
            updates.append(method.combine(sample_grads(T, 7, seed=step), ctx))
            if method.needs_losses_after_step:
                method.losses_after_step(0.9 * losses)
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad()
    return updates


def wrong_values(default: object) -> list[object]:
    """Values of the wrong type (or non-finite) for a hyperparameter whose default is ``default``."""
    if isinstance(default, bool):
        return ["false", "true", 0, 1, None]
    if isinstance(default, int | float):
        return ["1", True, False, None, math.nan, math.inf]
    if isinstance(default, str):
        return [f"no_such_{default}", default.upper(), None, True, 1]
    if default is None:  # an optional number per task
        return ["1" * T, True, math.nan, [True] * T, [math.inf] * T]
    return [object()]


def hyperparameter_cases() -> list[object]:
    """``(method, key, value)`` for every default-valued constructor parameter and wrong value."""
    return [
        pytest.param(name, key, value, id=f"{name}-{key}-{value!r}")
        for name in NAMES
        for key, default in METHODS.get(name).defaults().items()
        if default is not inspect.Parameter.empty
        for value in wrong_values(default)
    ]


def conflicting_matrices() -> list[Tensor]:
    """Random matrices with conflicts: more parameters than tasks, fewer, and one task per direction."""
    return [
        sample_grads(4, 7, seed=1),
        sample_grads(6, 3, seed=2),
        sample_grads(2, 2, seed=3),
        sample_grads(5, 40, seed=4),
    ]


def assert_no_conflict(grads: Tensor, update: Tensor) -> None:
    """``J @ update >= 0`` up to float64 rounding relative to the norms involved."""
    dots = grads @ update
    tolerance = 1e-9 * grads.norm(dim=1) * update.norm() + 1e-12
    assert (dots >= -tolerance).all(), f"J @ update = {dots.tolist()}"


@pytest.mark.parametrize("name", NAMES)
def test_declares_metadata(name: str) -> None:
    cls = METHODS.get(name)
    assert cls.description and "\n" not in cls.description
    assert cls.citation and cls.__doc__
    assert cls.level in LEVELS
    required = [n for n, default in cls.defaults().items() if default is inspect.Parameter.empty]
    assert not required, f"hyperparameters without a default: {required}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", SCALES)
def test_finite_shape_dtype_under_scaling(name: str, dtype: torch.dtype, scale: float) -> None:
    grads = sample_grads(T, 7, dtype=dtype) * scale
    update = build(name).combine(grads, make_ctx(T, dtype))
    assert update.shape == grads.shape[1:]
    assert update.dtype == dtype
    assert torch.isfinite(update).all()


@pytest.mark.parametrize(("name", "key", "value"), hyperparameter_cases())
def test_constructor_rejects_wrong_hyperparameters(name: str, key: str, value: object) -> None:
    """A string for a number, ``True`` for a number, ``"false"`` for a flag, ``None`` where not allowed:
    a ``ValueError`` naming the method, the key and the value, before anything runs."""
    with pytest.raises(ValueError) as err:
        get_method(name, num_tasks=T, **{key: value})
    message = str(err.value)
    for part in (name, key):
        assert re.search(rf"(?<![\w.]){re.escape(part)}\b", message), f"{part!r} not named in {message!r}"
    assert repr(value) in message


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DEGENERATE)
def test_finite_update_for_degenerate_gradients(name: str, dtype: torch.dtype, case: str) -> None:
    """Three steps of a fresh method on the same degenerate gradients: every update is finite."""
    grads = degenerate_matrices(dtype)[case]
    method = build(name, grads.shape[0])
    for step in range(3):
        update = method.combine(grads, make_ctx(grads.shape[0], dtype, seed=step, step=step))
        assert update.shape == grads.shape[1:] and torch.isfinite(update).all(), f"step {step}: {update}"


@pytest.mark.parametrize("name", NAMES)
def test_context_is_optional(name: str) -> None:
    grads = sample_grads(T, 7)
    assert build(name).combine(grads).shape == (7,)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_gradients_give_zero_update(name: str, dtype: torch.dtype) -> None:
    grads = torch.zeros(T, 7, dtype=dtype)
    assert torch.equal(build(name).combine(grads, make_ctx(T, dtype)), torch.zeros(7, dtype=dtype))


@pytest.mark.parametrize("name", NAMES)
def test_single_task_does_not_ascend(name: str) -> None:
    grads = sample_grads(1, 7)
    update = build(name, num_tasks=1).combine(grads, make_ctx(1, torch.float64))
    assert update.shape == (7,) and torch.isfinite(update).all()
    assert torch.dot(update, grads[0]) >= 0


@pytest.mark.parametrize("name", NAMES)
def test_feature_level_shapes(name: str) -> None:
    grads = sample_grads(T, 5, 3)
    activation = sample_grads(5, 3, seed=1)
    ctx = make_ctx(T, torch.float64, level="feature", activation=activation)
    update = build(name).combine(grads, ctx)
    assert update.shape == (5, 3) and update.dtype == grads.dtype
    assert torch.isfinite(update).all()


@pytest.mark.parametrize("name", NAMES)
def test_seeded_generator_reproduces_the_update(name: str) -> None:
    """Two fresh instances (stateful methods move on with every call) with equally seeded contexts."""
    grads = sample_grads(T, 7)
    first = build(name).combine(grads, make_ctx(T, torch.float64, seed=3))
    second = build(name).combine(grads, make_ctx(T, torch.float64, seed=3))
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", [n for n in NAMES if build(n).deterministic])
def test_deterministic_methods_ignore_every_random_draw(name: str) -> None:
    """Two fresh instances on the same sequence, with different generators and global seeds."""
    first = run_steps(build(name), generator_seed=0, global_seed=0)
    second = run_steps(build(name), generator_seed=1, global_seed=1)
    for step, (a, b) in enumerate(zip(first, second, strict=True)):
        assert torch.equal(a, b), f"step {step}: the update depends on a random draw"


@pytest.mark.parametrize("name", [n for n in NAMES if not build(n).deterministic])
def test_methods_not_claiming_determinism_draw_random_numbers(name: str) -> None:
    """Why a method does not claim ``deterministic``: its updates change with ``ctx.generator`` (or,
    without one, with torch's global RNG) at least once over a few steps."""
    differ = [
        any(not torch.equal(a, b) for a, b in zip(*runs, strict=True))
        for runs in (
            (run_steps(build(name), 0, 0), run_steps(build(name), 1, 0)),
            (run_steps(build(name), None, 0), run_steps(build(name), None, 1)),
        )
    ]
    if not any(differ) and not METHODS.get(name).__module__.startswith("methods."):
        pytest.skip(f"plugin {name!r} draws no random number here; it could claim deterministic")
    assert differ[0] or differ[1], f"{name} draws no random number: set deterministic = True"


@pytest.mark.parametrize("name", NAMES)
def test_rejects_gradients_of_the_wrong_task_count(name: str) -> None:
    with pytest.raises(ValueError, match=r"\[4, \.\.\.\]"):
        build(name).combine(sample_grads(T + 1, 7))


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40, deadline=None, derandomize=True)  # the same examples on every CI run
@given(
    grads=arrays(
        np.float64,
        array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6),
        elements=st.floats(-1e6, 1e6, allow_subnormal=False),
    )
)
def test_finite_update_for_any_gradient_matrix(name: str, grads: np.ndarray) -> None:
    """Mixed magnitudes, exact zeros, repeated and opposite rows: the update stays finite."""
    matrix = torch.from_numpy(grads)
    num_tasks = matrix.shape[0]
    update = build(name, num_tasks).combine(matrix, make_ctx(num_tasks, torch.float64))
    assert update.shape == matrix.shape[1:] and torch.isfinite(update).all()


@pytest.mark.parametrize("name", NAMES)
def test_identical_gradients_are_not_opposed(name: str) -> None:
    """Every task wants the same step: the update may shrink or drop parts of it, never oppose it."""
    grads = sample_grads(7).repeat(T, 1)
    update = update_of(name, grads)
    assert torch.isfinite(update).all()
    assert_no_conflict(grads, update)


@pytest.mark.parametrize("name", NAMES)
def test_exactly_opposite_gradients(name: str) -> None:
    row = sample_grads(7)
    update = update_of(name, torch.stack([row, -row]))
    assert torch.isfinite(update).all()
    if METHODS.get(name).non_conflicting:  # no direction helps one without hurting the other
        torch.testing.assert_close(update, torch.zeros_like(update), rtol=0, atol=1e-9 * row.norm())


@pytest.mark.parametrize("name", NAMES)
def test_orthogonal_gradients_do_not_conflict(name: str) -> None:
    """Rows with disjoint supports: nothing conflicts, so no method may make a task worse."""
    grads = torch.zeros(T, 2 * T, dtype=torch.float64)
    for i in range(T):
        grads[i, 2 * i : 2 * i + 2] = sample_grads(2, seed=i) * 10.0**i
    assert_no_conflict(grads, update_of(name, grads))


@pytest.mark.parametrize("name", NAMES)
def test_non_zero_update_away_from_pareto_stationarity(name: str) -> None:
    """Full row rank: no convex combination of the gradients vanishes, so there is a common descent."""
    grads = sample_grads(T, 7, seed=5)
    assert update_of(name, grads).norm() > 0


@pytest.mark.parametrize("name", claiming("permutation_invariant"))
@pytest.mark.parametrize("grads", conflicting_matrices(), ids=lambda g: "x".join(map(str, g.shape)))
def test_permutation_invariance(name: str, grads: Tensor) -> None:
    losses = torch.rand(grads.shape[0], generator=torch.Generator().manual_seed(0), dtype=grads.dtype) + 0.5
    order = torch.randperm(grads.shape[0], generator=torch.Generator().manual_seed(1))
    expected = update_of(name, grads, losses=losses)
    torch.testing.assert_close(update_of(name, grads[order], losses=losses[order]), expected)


@pytest.mark.parametrize("name", claiming("linear_under_scaling"))
@pytest.mark.parametrize("scale", [0.5, 3.0, 1e3])
def test_linear_under_scaling(name: str, scale: float) -> None:
    for grads in conflicting_matrices():
        expected = scale * update_of(name, grads)
        torch.testing.assert_close(update_of(name, scale * grads), expected)


@pytest.mark.parametrize("name", claiming("non_conflicting"))
@pytest.mark.parametrize("grads", conflicting_matrices(), ids=lambda g: "x".join(map(str, g.shape)))
def test_non_conflicting(name: str, grads: Tensor) -> None:
    assert_no_conflict(grads, update_of(name, grads))


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_combine_under_bf16_autocast_runs_in_float32(name: str, input_dtype: torch.dtype) -> None:
    """Mixed precision: a method's arithmetic never drops to bfloat16, even called inside autocast
    or handed bfloat16 gradients; the update is float32 and equals the float32 one."""
    grads = sample_grads(T, 7, dtype=torch.float32).to(input_dtype)
    losses = make_ctx(T, torch.float32).losses
    with torch.autocast("cpu", torch.bfloat16):
        update = update_of(name, grads, losses=losses)
    assert update.dtype == torch.float32 and update.isfinite().all()
    torch.testing.assert_close(update, update_of(name, grads.float(), losses=losses))


@pytest.mark.parametrize("outputs", [1, 2])
@pytest.mark.parametrize("name", claiming("accepts_factored"))
def test_factored_gradients_give_the_dense_update(name: str, outputs: int) -> None:
    """Methods that accept the linear heads' factors: the same update as on the dense gradients they
    stand for (same draws; float64, so that rounding cannot flip a random choice)."""
    coefficients, weights = sample_grads(T, 6, outputs, seed=2), sample_grads(T, outputs, 3, seed=3)
    factored = FactoredGradients(coefficients, weights)
    activation = sample_grads(6, 3, seed=4)
    updates = [
        build(name).combine(grads, make_ctx(T, torch.float64, level="feature", activation=activation))
        for grads in (factored, factored.dense())
    ]
    torch.testing.assert_close(*updates)
