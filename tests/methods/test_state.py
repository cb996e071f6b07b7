"""Every piece of state a method keeps across steps is in its ``state_dict``, so a run checkpointed
mid-way resumes exactly (:mod:`benchmark.checkpoint`).

Parametrised over ``METHODS.names()``: a new plugin in ``methods/`` is checked here with no edits.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor

from benchmark.method import Method, StepContext, get_method
from benchmark.registry import METHODS

NAMES = METHODS.names()
T = 3
STEPS = 6  # enough for the epoch-based state: DWA's ratios and STCH's nadir (warm-up epoch 4) exist


def step(method: Method, index: int, generator: torch.Generator) -> Tensor:
    """One step of the method on seeded gradients and losses, epoch = step (what the trainer calls)."""
    draws = torch.Generator().manual_seed(index)
    grads = torch.randn(T, 5, generator=draws, dtype=torch.float64)
    losses = torch.rand(T, generator=draws, dtype=torch.float64) + 0.5
    extra = torch.randn(T, 5, generator=draws, dtype=torch.float64)
    ctx = StepContext(losses=losses, step=index, generator=generator, epoch=index, extra_grads=extra)
    with torch.no_grad():
        out = method.combine(grads, ctx) if method.needs_grads else method.weights(losses, ctx)
        if method.needs_losses_after_step:
            method.losses_after_step(losses * 0.9)
    return out


def trained(name: str) -> tuple[Method, torch.Generator]:
    method, generator = get_method(name, num_tasks=T), torch.Generator().manual_seed(0)
    for index in range(STEPS):
        step(method, index, generator)
    return method, generator


def same(a: object, b: object) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, Tensor | dict) or isinstance(b, Tensor | dict):
        return False
    return a == b


@pytest.mark.parametrize("name", NAMES)
def test_a_method_restored_from_its_state_dict_continues_identically(name: str) -> None:
    method, generator = trained(name)
    restored = get_method(name, num_tasks=T)
    restored.load_state_dict(copy.deepcopy(method.state_dict()))
    again = torch.Generator().manual_seed(0)
    again.set_state(generator.get_state())
    for index in range(STEPS, STEPS + 2):
        assert torch.equal(step(method, index, generator), step(restored, index, again))
    for key, value in method.state_dict().items():
        assert same(value, restored.state_dict()[key]), key


@pytest.mark.parametrize("name", NAMES)
def test_no_attribute_changes_unless_it_is_declared_state(name: str) -> None:
    fresh, method = get_method(name, num_tasks=T), trained(name)[0]
    changed = [key for key, value in vars(method).items() if not same(value, vars(fresh)[key])]
    undeclared = [key for key in changed if not key.startswith("_") and key not in method.state_attributes]
    assert undeclared == []


def test_extra_state_is_copied_in_and_checked() -> None:
    method = trained("moco")[0]
    restored = get_method("moco", num_tasks=T)
    state = method.state_dict()
    restored.load_state_dict(state)
    assert restored.rows is not None and restored.step == STEPS
    restored.rows.add_(1.0)  # MoCo updates its rows in place: the source must not see it
    assert torch.equal(state["_extra_state"]["rows"], method.rows)
    with pytest.raises(ValueError, match=r"moco: extra state \['step'\], expected the attributes"):
        restored.set_extra_state({"step": 3})


def test_stateless_methods_have_an_empty_extra_state() -> None:
    assert get_method("pcgrad", num_tasks=T).state_dict() == {"_extra_state": {}}
