"""The method bases and composition: weights to updates, Gramian methods, weighting ∘ method."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from benchmark.method import (
    Composed,
    GramianMethod,
    StepContext,
    WeightedMethod,
    build_method,
    get_method,
)
from benchmark.specs import PluginSpec

J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)


class Diagonal(GramianMethod):
    """Weights 1 / ‖gᵢ‖², read off the Gramian."""

    def gramian_weights(self, gramian: Tensor, ctx: StepContext) -> Tensor:
        return 1 / gramian.diagonal()


class Halves(WeightedMethod):
    """Weights from the gradients: ½ each."""

    def task_weights(self, grads: Tensor, ctx: StepContext) -> Tensor:
        return grads.new_full((self.num_tasks,), 0.5)


def test_gramian_method_weights_the_rows_by_its_gramian_weights() -> None:
    expected = J[0] / 18 + J[1] / 38  # ‖g₁‖² = 18, ‖g₂‖² = 38
    torch.testing.assert_close(Diagonal(2).combine(J), expected)


def test_weighted_method_keeps_the_feature_shape() -> None:
    grads = torch.arange(12.0).view(2, 3, 2)
    torch.testing.assert_close(Halves(2).combine(grads), grads.mean(0))


def test_loss_weighting_reads_the_losses_of_the_context() -> None:
    fixed = get_method("fixed", 2, weights=[2.0, -1.0])
    torch.testing.assert_close(fixed.combine(J, StepContext(losses=torch.ones(2))), 2 * J[0] - J[1])


def test_composition_weights_the_gradients_and_losses_before_the_method() -> None:
    seen: dict[str, Tensor] = {}

    class Spy(WeightedMethod):
        def task_weights(self, grads: Tensor, ctx: StepContext) -> Tensor:
            seen["grads"], seen["losses"] = grads, ctx.losses
            return grads.new_ones(self.num_tasks)

    composed = Composed(get_method("fixed", 2, weights=[2.0, 3.0]), Spy(2))
    update = composed.combine(J, StepContext(losses=torch.tensor([1.0, 1.0], dtype=torch.float64)))
    torch.testing.assert_close(seen["grads"], torch.stack([2 * J[0], 3 * J[1]]))
    torch.testing.assert_close(seen["losses"], torch.tensor([2.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(update, 2 * J[0] + 3 * J[1])
    assert composed.needs_grads and composed.name.startswith("fixed+")


def test_two_loss_weightings_compose_into_one_backward() -> None:
    composed = Composed(
        get_method("fixed", 2, weights=[2.0, 3.0]), get_method("fixed", 2, weights=[0.5, 2.0])
    )
    assert not composed.needs_grads
    torch.testing.assert_close(composed.weights(torch.ones(2)), torch.tensor([1.0, 6.0]))


def test_composition_refuses_a_method_without_task_weights() -> None:
    with pytest.raises(ValueError, match="'graddrop' cannot be a weighting"):
        Composed(get_method("graddrop", 2), get_method("pcgrad", 2))
    with pytest.raises(ValueError, match="3 tasks"):
        Composed(get_method("ew", 3), get_method("graddrop", 2))


def test_build_method_composes_a_spec_with_a_weighting() -> None:
    method = build_method(
        PluginSpec("graddrop", {"k": 0.5}, weighting=PluginSpec("fixed", {"weights": [1, 2]})), 2
    )
    assert isinstance(method, Composed) and method.name == "fixed+graddrop"
    assert method.level == "feature" and method.method.k == 0.5
    assert not isinstance(build_method(PluginSpec("ew"), 2), Composed)


def test_composed_method_learnable_parts_are_its_parameters() -> None:
    class Learnable(Halves):
        def __init__(self, num_tasks: int) -> None:
            super().__init__(num_tasks)
            self.scale = torch.nn.Parameter(torch.ones(()))

    assert len(list(Composed(Learnable(2), get_method("ew", 2)).parameters())) == 1


def test_composition_passes_on_second_batches_and_the_learning_rate_and_after_step_hooks() -> None:
    composed = Composed(get_method("famo", 2), get_method("sdmgrad", 2))
    assert composed.batches_per_step == 2 and composed.needs_losses_after_step
    assert composed.default_method_lr == 0.025
    losses = torch.tensor([1.0, 2.0], dtype=torch.float64)
    for extra in (None, 2 * J):  # without a second batch (feature level, no trainer) and with one
        update = composed.combine(J, StepContext(losses=losses, extra_grads=extra))
        assert torch.isfinite(update).all()
    composed.losses_after_step(losses / 2)
    assert composed.weighting.logits.grad is not None
