"""MultiTaskModel's heads: LinearHead, heads stacked into one module, and the tasks that declare them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tasks.digits
import tasks.multi_digits  # noqa: F401
from benchmark.task import LinearHead, MultiTaskModel, StackedLinearHeads, get_task


def hand_heads() -> list[LinearHead]:
    """Two heads 2 -> 1: 1 z1 + 2 z2 + 0.5 and -z1."""
    heads = [LinearHead(2, 1, squeeze=True) for _ in range(2)]
    with torch.no_grad():
        for head, (w, b) in zip(heads, [([1.0, 2.0], 0.5), ([-1.0, 0.0], 0.0)], strict=True):
            head.weight.copy_(torch.tensor([w]))
            head.bias.fill_(b)
    return heads


def random_model(batched: bool, heads: int = 5, out: int = 3) -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel(nn.Linear(4, 6), [LinearHead(6, out) for _ in range(heads)], batched=batched)


def test_linear_head_squeezes_one_logit_per_row() -> None:
    z = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    assert torch.equal(hand_heads()[0](z), torch.tensor([3.5, 2.5]))
    with pytest.raises(ValueError, match="out_features == 1"):
        LinearHead(2, 3, squeeze=True)


def test_stacked_heads_give_hand_computed_outputs() -> None:
    stacked = StackedLinearHeads(hand_heads())
    z = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    first, second = stacked(z)
    assert torch.equal(first, torch.tensor([3.5, 2.5])) and torch.equal(second, torch.tensor([-1.0, -2.0]))


def test_stacking_keeps_the_separate_heads_parameters() -> None:
    heads = hand_heads()
    stacked = StackedLinearHeads(heads)
    assert torch.equal(stacked.weight, torch.tensor([[[1.0, 2.0]], [[-1.0, 0.0]]]))
    assert torch.equal(stacked.bias, torch.tensor([[0.5], [0.0]]))
    assert len(stacked) == 2


def test_batched_model_matches_separate_heads_in_outputs_and_gradients() -> None:
    separate, batched = random_model(False), random_model(True)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    for a, b in zip(separate(x), batched(x), strict=True):
        torch.testing.assert_close(a, b)
    sum(o.square().sum() for o in separate(x)).backward()
    sum(o.square().sum() for o in batched(x)).backward()
    torch.testing.assert_close(batched.trunk.weight.grad, separate.trunk.weight.grad)
    stacked_grad = torch.stack([h.weight.grad for h in separate.heads])
    torch.testing.assert_close(batched.heads.weight.grad, stacked_grad)


def test_each_alias_gets_the_gradient_of_its_own_head_only() -> None:
    model = random_model(False)
    z = torch.randn(8, 6, generator=torch.Generator().manual_seed(2))
    aliases = [z.detach().requires_grad_() for _ in range(5)]
    outputs = model.forward_each(aliases)
    outputs[1].sum().backward()  # loss of head 1 alone
    torch.testing.assert_close(aliases[1].grad, model.heads[1].weight.sum(0).expand(8, 6).detach())
    assert all(alias.grad is None for i, alias in enumerate(aliases) if i != 1)
    with pytest.raises(ValueError, match="forward_each needs separate heads"):
        random_model(True).forward_each(aliases)


def test_linear_head_weights_are_the_stacked_weights_or_none() -> None:
    separate, batched = random_model(False), random_model(True)
    assert torch.equal(separate.linear_head_weights(), batched.heads.weight.detach())
    assert separate.linear_head_weights().shape == (5, 3, 6) and not separate.batched and batched.batched
    assert MultiTaskModel(nn.Linear(4, 6), [LinearHead(6, 2), nn.Linear(6, 2)]).linear_head_weights() is None
    assert MultiTaskModel(nn.Linear(4, 6), [LinearHead(6, 2), LinearHead(6, 3)]).linear_head_weights() is None
    squeezed = [LinearHead(6, 1, squeeze=True), LinearHead(6, 1)]
    assert MultiTaskModel(nn.Linear(4, 6), squeezed).linear_head_weights() is None


def test_heads_of_another_shape_or_kind_cannot_be_stacked() -> None:
    with pytest.raises(ValueError, match="head 1 is"):
        StackedLinearHeads([LinearHead(4, 2), LinearHead(4, 3)])
    with pytest.raises(ValueError, match="head 0 is Linear"):
        MultiTaskModel(nn.Identity(), [nn.Linear(4, 2)], batched=True)
    with pytest.raises(ValueError, match="none"):
        StackedLinearHeads([])


@pytest.mark.parametrize("name", ["digits", "multi_digits"])
def test_tasks_declaring_linear_heads_build_stackable_models(name: str) -> None:
    task = get_task(name)
    assert task.linear_heads
    model = task.build_model()
    model.batch_heads()
    assert isinstance(model.heads, StackedLinearHeads) and len(model.heads) == task.num_tasks
