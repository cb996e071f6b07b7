"""GradNorm: learnable task weights that balance the gradient norms (Chen et al. 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmark.method import StepContext, WeightedMethod, accumulate_grad
from benchmark.registry import METHODS
from methods._checks import check_number


@METHODS.register("gradnorm")
class GradNorm(WeightedMethod):
    """GradNorm, Chen et al. 2018, "GradNorm: Gradient Normalization for Adaptive Loss Balancing in
    Deep Multitask Networks" (https://arxiv.org/abs/1711.02257), Section 3.

    The update is ``Σᵢ wᵢ gᵢ`` with learnable weights w (initialised to 1). Each call sets ``w.grad``
    to the gradient of the paper's Eq. (2), ``L_grad = Σᵢ |Gᵢ − Ḡ rᵢ^α|``, where ``Gᵢ = ‖wᵢ gᵢ‖``,
    ``Ḡ`` is their mean, ``rᵢ = L̃ᵢ / mean(L̃)`` and ``L̃ᵢ = Lᵢ(t) / Lᵢ(0)``; the target ``Ḡ rᵢ^α`` is a
    constant, as the paper prescribes, so ``∂L_grad/∂wᵢ = sign(Gᵢ − Ḡ rᵢ^α) ‖gᵢ‖``. The trainer's
    method optimiser then steps w. The paper renormalises w to ``Σ wᵢ = T`` after every step; since
    the trainer steps the optimiser after this call, the renormalisation happens at the start of the
    next call (in place, before w is used), and the weights returned are the renormalised ones.

    Args:
        alpha: the asymmetry α of Eq. (2), the strength of the pull towards a common training rate
            (1.5, LibMTL's default; the paper tunes α per dataset).

    The gradients are the ones the method receives: the default ``level = "feature"`` takes the norms
    of the gradients w.r.t. the shared representation, one backward for the whole method.

    Departures: the paper takes ``Gᵢ`` at the last shared layer's weights W; at the param level this
    engine has the gradient w.r.t. all shared parameters, and at the feature level (the default) the
    one w.r.t. the shared representation. ``Lᵢ(0)`` comes from the first call that has losses (the
    paper's t = 0); without losses (or with a non-positive ``Lᵢ(0)``) ``L̃ᵢ = 1``, and negative loss
    ratios are clamped to 0, so r stays defined. Weights that the optimiser drives below 0 are clamped
    to 0 before the renormalisation (all ones if none is left positive), which the paper leaves
    implicit by assuming positive weights.
    """

    description = "Learnable task weights trained to equalise the weighted gradient norms (GradNorm)"
    citation = "Chen et al. 2018, ICML"
    level = "feature"
    deterministic = True
    permutation_invariant = True
    linear_under_scaling = True
    state_attributes = ("initial_losses",)

    def __init__(self, num_tasks: int, alpha: float = 1.5) -> None:
        super().__init__(num_tasks)
        self.alpha = check_number("gradnorm", "alpha", alpha)
        self.loss_weights = nn.Parameter(torch.ones(num_tasks))
        self.initial_losses: Tensor | None = None

    def task_weights(self, grads: Tensor, ctx: StepContext) -> Tensor:
        weights = self.renormalize()
        norms = torch.linalg.vector_norm(grads.flatten(1), dim=1).to(weights)
        target = (weights * norms).mean() * self.loss_ratios(ctx.losses, weights) ** self.alpha
        grad = torch.sign(weights * norms - target) * norms
        accumulate_grad(self.loss_weights, grad)
        return weights.to(grads.device)

    @torch.no_grad()
    def renormalize(self) -> Tensor:
        """Clamp w at 0 and rescale it in place to ``Σ wᵢ = T``; a detached copy of the result."""
        weights = self.loss_weights.clamp_min(0)
        total = weights.sum()
        valid = torch.isfinite(total) & (total > 0)
        weights = torch.where(
            valid, weights / total.clamp_min(torch.finfo(total.dtype).tiny) * self.num_tasks, 1.0
        )
        self.loss_weights.copy_(weights)
        return weights

    def loss_ratios(self, losses: Tensor | None, like: Tensor) -> Tensor:
        """``rᵢ = L̃ᵢ / mean(L̃)`` with ``L̃ᵢ = Lᵢ(t) / Lᵢ(0)``; ones where that is undefined."""
        ones = torch.ones_like(like)
        if losses is None:
            return ones
        losses = losses.detach().reshape(-1).to(like)
        if self.initial_losses is None:
            self.initial_losses = losses.clone()
        initial = self.initial_losses.to(like)
        rates = losses / initial.clamp_min(torch.finfo(like.dtype).tiny)
        training_rates = torch.nan_to_num(torch.where(initial > 0, rates, 1.0)).clamp_min(0)  # L̃
        mean = training_rates.mean()
        valid = torch.isfinite(mean) & (mean > 0)
        return torch.where(valid, training_rates / mean.clamp_min(torch.finfo(like.dtype).tiny), ones)
