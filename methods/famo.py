"""FAMO: fast adaptive multitask optimisation, loss weights learned from the log-loss decrease."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmark.method import StepContext, WeightingMethod, accumulate_grad
from benchmark.registry import METHODS
from methods._checks import check_number, task_vector


@METHODS.register("famo")
class FAMO(WeightingMethod):
    """FAMO, Liu et al. 2023, "FAMO: Fast Adaptive Multitask Optimization"
    (https://arxiv.org/abs/2306.03792, Algorithm 1, as in the authors' ``famo.py``).

    Learnable logits ``ξ`` (initialised to 0) give ``z = softmax(ξ)``. With ``Dᵢ = Lᵢ − l*ᵢ + ε``, the
    model descends ``Σᵢ zᵢ log Dᵢ / c``, ``c = Σᵢ zᵢ / Dᵢ``, so the loss weights are
    ``wᵢ = (zᵢ / Dᵢ) / Σⱼ (zⱼ / Dⱼ)`` (they sum to 1). After the model's step the trainer recomputes this
    batch's losses and calls :meth:`losses_after_step`, which sets ``ξ.grad = Jᵀ δ + γ ξ`` with
    ``δ = log D(before) − log D(after)`` and ``J = ∂z/∂ξ``; the trainer's method optimiser then steps
    ``ξ``, by default at the paper's ξ learning rate 0.025 (the authors' ``w_lr``, with Adam;
    ``default_method_lr``; a suite's ``method_lr`` overrides it).

    Args:
        gamma: ``γ``, the decay of ``ξ`` (the authors' Adam ``weight_decay`` on ``ξ``); 1e-3 as in their
            QM9 script (their ``famo.py`` and CelebA script use 1e-2).
        min_losses: ``l*``, the least value of each loss: one number for all tasks or one per task
            (default 0, as in the paper's experiments).
        eps: ``ε``, added to ``L − l*`` before the log and the division (authors: 1e-8).

    Departures: ``L − l*`` is clamped at 0 before adding ``ε``, so a loss below its stated minimum
    cannot make the log undefined; ``γ ξ`` is added to ``ξ.grad`` rather than given to the optimiser as
    weight decay (the same for SGD and Adam's coupled L2; leave the trainer's ``weight_decay`` at 0 or
    it decays ``ξ`` too). The authors also clip the shared gradient to norm 1: that is the trainer's
    ``clip_grad_norm``.
    """

    description = "FAMO: loss weights learned online so that all log-losses decrease at the same rate"
    citation = "Liu et al. 2023, NeurIPS"
    level = "param"
    deterministic = True
    needs_losses_after_step = True
    default_method_lr = 0.025
    permutation_invariant = True
    linear_under_scaling = True
    state_attributes = ("prev_losses",)

    def __init__(
        self, num_tasks: int, gamma: float = 1e-3, min_losses: float | list[float] = 0.0, eps: float = 1e-8
    ) -> None:
        super().__init__(num_tasks)
        self.gamma = check_number("famo", "gamma", gamma)
        self.eps = check_number("famo", "eps", eps, low_open=True)
        minimum = task_vector("famo", "min_losses", min_losses, num_tasks)
        self.register_buffer("min_losses", minimum, persistent=False)
        self.logits = nn.Parameter(torch.zeros(num_tasks))
        self.prev_losses: Tensor | None = None

    def weights(self, losses: Tensor, ctx: StepContext | None = None) -> Tensor:
        self.prev_losses = losses.detach().clone()
        z = torch.softmax(self.logits.detach().to(device=losses.device, dtype=losses.dtype), dim=0)
        inverse = z / self._gaps(losses)
        return inverse / inverse.sum()

    def losses_after_step(self, losses: Tensor) -> None:
        if self.prev_losses is None:
            raise RuntimeError("famo: losses_after_step was called before weights")
        decrease = self._gaps(self.prev_losses).log() - self._gaps(losses.detach()).log()
        logits = self.logits.detach()
        z = torch.softmax(logits, dim=0).to(decrease)
        grad = (z * (decrease - torch.dot(z, decrease))).to(logits) + self.gamma * logits  # Jᵀδ + γξ
        accumulate_grad(self.logits, grad)

    def _gaps(self, losses: Tensor) -> Tensor:
        """``D = max(L − l*, 0) + ε``, ``[T]``."""
        minimum = self.min_losses.to(device=losses.device, dtype=losses.dtype)
        return (losses - minimum).clamp_min(0) + self.eps
