"""MoCo: multi-objective gradient correction with tracked gradients (Fernando et al. 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.method import Method, StepContext
from benchmark.registry import METHODS
from methods._checks import check_choice, check_number
from methods._simplex import project_onto_simplex, uniform

NORMALIZATIONS = ("loss", "l2", "none")
_RESCALE_BELOW = 1e-4  # the stored rows are rescaled when Y's scalar factor falls below this


@METHODS.register("moco")
class MoCo(Method):
    """MoCo, Fernando et al. 2023, "Mitigating Gradient Bias in Multi-objective Learning: A Provably
    Convergent Approach" (https://arxiv.org/abs/2210.12624), Algorithm 1 with the defaults of LibMTL's
    port of the authors' code.

    Step k (from 1) keeps two pieces of state, a tracking variable Y (one row per task, like the
    gradients, starting at 0) and simplex weights λ (starting uniform):

        ``Y ← Y − β_k (Y − H)``, ``β_k = β / k^σβ``   (H: this step's gradients, normalised)
        ``λ ← Π_Δ(λ − γ_k (Y Yᵀ + ρ I) λ)``, ``γ_k = γ / k^σγ``

    and the update is ``λᵀ Y``. The tracked Y corrects the bias of stochastic MGDA; Π_Δ is the
    Euclidean projection onto the simplex (:func:`methods._simplex.project_onto_simplex`).

    Args:
        beta, beta_sigma: the tracking rate β and its decay exponent σβ (LibMTL: 0.5, 0.5).
        gamma, gamma_sigma: the step size γ of λ and its decay exponent σγ (LibMTL: 0.1, 0.5).
        rho: ρ ≥ 0, the ℓ2 regularisation of the λ sub-problem (LibMTL: 0).
        normalization: how H is formed: ``"loss"`` (default, LibMTL) ``Lᵢ gᵢ / ‖gᵢ‖`` (the losses
            count as 1 without ``ctx.losses``); ``"l2"`` ``gᵢ / ‖gᵢ‖``; ``"none"`` the raw gradients
            (the paper's Algorithm 1).

    Departures: LibMTL updates λ with a softmax of ``λ − γ_k (YYᵀ + ρI) λ``; here it is the paper's
    projection onto the simplex. The paper's projection of each row of Y onto a ball (of the
    gradients' bound) is left out, as in the authors' and LibMTL's code. Y restarts at 0 when the
    gradients' shape, device or dtype changes (e.g. a smaller last batch at the feature level). Y is
    stored as a scalar times a tensor, so that each step makes one pass over it.
    """

    description = "Stochastic MGDA on tracked (EMA) gradients with a projected step on the simplex weights"
    citation = "Fernando et al. 2023, ICLR"
    level = "param"
    deterministic = True
    state_attributes = ("step", "rows", "magnitude", "lambd")

    def __init__(
        self,
        num_tasks: int,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
        normalization: str = "loss",
    ) -> None:
        super().__init__(num_tasks)
        self.beta = check_number("moco", "beta", beta, high=1.0, low_open=True)
        self.beta_sigma = check_number("moco", "beta_sigma", beta_sigma)
        self.gamma = check_number("moco", "gamma", gamma, low_open=True)
        self.gamma_sigma = check_number("moco", "gamma_sigma", gamma_sigma)
        self.rho = check_number("moco", "rho", rho)
        self.normalization = check_choice("moco", "normalization", normalization, NORMALIZATIONS)
        self.step = 0
        self.rows: Tensor | None = None  # Y / magnitude, [T, *shape] like the gradients
        self.magnitude = 1.0  # Y = magnitude · rows: the EMA's decay is a scalar, not a pass over Y
        self.lambd: Tensor | None = None  # λ, [T] float64 on the gradients' device

    @property
    def tracked(self) -> Tensor | None:
        """The tracking variable Y, ``[T, *shape]`` (``None`` before the first step)."""
        return None if self.rows is None else self.magnitude * self.rows

    def combine(self, grads: Tensor, ctx: StepContext | None = None) -> Tensor:
        self.check_grads(grads)
        ctx = ctx or StepContext()
        if self.rows is None or _layout(self.rows) != _layout(grads):
            self.rows, self.magnitude = torch.zeros_like(grads), 1.0
        if self.lambd is None or self.lambd.device != grads.device:
            self.lambd = uniform(self.num_tasks, grads.device)
        self.step += 1
        rate = self.beta / self.step**self.beta_sigma
        keep = self.magnitude * (1 - rate)  # Y − β_k (Y − H) = keep · rows + β_k H
        if keep < _RESCALE_BELOW:  # fold the magnitude into the rows before it underflows
            self.rows.mul_(keep)
            keep = 1.0
        self.rows.addcmul_(grads, self._scales(grads, ctx.losses) * (rate / keep))
        self.magnitude = keep
        rows = self.rows.flatten(1)
        gramian = (rows @ rows.T).double() * keep**2
        gramian.diagonal().add_(self.rho)
        step_size = self.gamma / self.step**self.gamma_sigma
        self.lambd = project_onto_simplex(self.lambd - step_size * (gramian @ self.lambd))
        return ((keep * self.lambd).to(grads.dtype) @ rows).view(grads.shape[1:])

    def _scales(self, grads: Tensor, losses: Tensor | None) -> Tensor:
        """The factor of each gradient in H, shaped to broadcast against ``grads``."""
        shape = (-1, *[1] * (grads.dim() - 1))
        if self.normalization == "none":
            return grads.new_ones(self.num_tasks).view(shape)
        factors = 1 / grads.flatten(1).norm(dim=1).clamp_min(torch.finfo(grads.dtype).tiny)
        if self.normalization == "loss" and losses is not None:
            factors = factors * losses.to(device=grads.device, dtype=grads.dtype).reshape(-1)
        return factors.view(shape)


def _layout(tensor: Tensor) -> tuple[torch.Size, torch.dtype, torch.device]:
    return tensor.shape, tensor.dtype, tensor.device
