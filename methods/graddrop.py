"""GradDrop: Gradient Sign Dropout (Chen et al. 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from benchmark.factored import FactoredGradients, Gradients
from benchmark.method import Method, StepContext
from benchmark.registry import METHODS
from methods._blocks import column_blocks
from methods._checks import check_choice, check_flag, check_number, task_vector

PURITY_FNS = ("linear", "sigmoid")
INPUTS = ("sign", "value", "none")


def sign_purity(signal: Tensor, eps: float = 1e-7) -> Tensor:
    """Gradient positive sign purity ``P = ½(1 + Σᵢ Gᵢ / (Σᵢ |Gᵢ| + ε))`` (paper eq. 1), over dim 0."""
    return purity(signal.sum(0), signal.abs().sum(0), eps)


def purity(total: Tensor, total_abs: Tensor, eps: float = 1e-7) -> Tensor:
    """:func:`sign_purity` from its two sums, ``Σᵢ Gᵢ`` and ``Σᵢ |Gᵢ|``."""
    return 0.5 * (1.0 + total / (total_abs + eps))


def keep_probability(purity: Tensor, purity_fn: str = "linear", k: float = 1.0) -> Tensor:
    """``f(P)``: ``linear`` ½ + k(P − ½) or ``sigmoid`` σ(4k(P − ½)); k = 0 gives ½ (Random GradDrop)."""
    centred = k * (purity - 0.5)
    return torch.sigmoid(4.0 * centred) if purity_fn == "sigmoid" else 0.5 + centred


def activation_sign(activation: Tensor, eps: float = 1e-7) -> Tensor:
    """sign(A) with lingvo's guard ``A / |A + 1[|A| ≤ ε]|``: ±1, and ≈ A (exactly 0 at 0) where |A| ≤ ε."""
    return activation / (activation + (activation.abs() <= eps).to(activation.dtype)).abs()


@METHODS.register("graddrop")
class GradDrop(Method):
    """GradDrop, Chen et al. 2020, "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient
    Sign Dropout" (https://arxiv.org/abs/2010.06808): Algorithm 1 with the options of the reference
    implementation ``tensorflow/lingvo`` ``lingvo/core/graddrop.py``.

    Per scalar of the gradient ``∇Lᵢ`` (vectorised over the T losses):

    1. ``Gᵢ = ∇Lᵢ · s(A)`` where A is ``ctx.activation`` and s is ``activation_sign`` (``input="sign"``),
       A itself (``"value"``) or 1 (``"none"``). Without ``ctx.activation`` the product is skipped.
    2. ``marginalize_batch``: ``Gᵢ ← Σ_batch Gᵢ`` (dim 1 of ``grads``) and one mask is tiled over the batch.
    3. ``P = sign_purity(G)``; keep probability ``f(P) = keep_probability(P, purity_fn, k)``.
    4. One ``U ~ U[0, 1)`` per scalar, shared by all losses (``torch.rand`` with ``ctx.generator``); the
       positive entries are kept where ``f(P) > U``, the negative ones elsewhere, entries with ``Gᵢ = 0``
       always (lingvo's choice). f outside [0, 1] thus acts as a hard 0/1.
    5. Update ``Σᵢ (ℓᵢ + (1 − ℓᵢ) Mᵢ) ∘ ∇Lᵢ`` on the raw gradients; ``keep_gradnorm_constant`` rescales it
       to ``‖Σᵢ ∇Lᵢ‖ / ‖update‖`` (left as is when the update is zero).

    Args:
        leak: ℓ, one float for all losses or one per loss, in [0, 1]; 1 passes a loss through unchanged.
        purity_fn: ``"linear"`` or ``"sigmoid"``.
        k: slope of f, ≥ 0; 1 with ``linear`` is the paper's default f(P) = P, 0 is Random GradDrop.
        input: ``"sign"``, ``"value"`` or ``"none"``, what multiplies the gradient in step 1.
        marginalize_batch: sum the signal over the batch (batch-separated losses, e.g. transfer).
            Parameter-level gradients have no batch dim: ``combine`` raises unless ``ctx.level`` is
            ``"feature"``.
        keep_gradnorm_constant: rescale the update to the norm of ``Σᵢ ∇Lᵢ``.
        eps: ε of the purity and of the sign guard.

    Accepts the linear heads' factors (``train: {factored_heads: true}``): with one output per head the
    four sums of step 5 come from them (:meth:`FactoredGradients.sign_sums`) without the dense
    gradients; otherwise (and with ``marginalize_batch``) the factors are expanded first.

    Departures from lingvo: ``keep_gradnorm_constant`` and ``marginalize_batch`` default to False
    (lingvo: True); the rescaling is ‖orig‖/‖new‖ (lingvo inverted it before Feb 2021); ε sits in
    ``Σ|G| + ε`` (lingvo: ``2Σ|G| + ε``); the tie f(P) = U keeps the negative sign (lingvo keeps the
    positive one), so that exactly one sign survives even when ``torch.rand`` returns 0.
    """

    description = "Gradient sign dropout: per scalar, keep one gradient sign chosen by its purity"
    citation = "Chen et al. 2020, NeurIPS"
    level = "feature"
    linear_under_scaling = True
    accepts_factored = True

    def __init__(
        self,
        num_tasks: int,
        leak: float | list[float] = 0.0,
        purity_fn: str = "linear",
        k: float = 1.0,
        input: str = "sign",
        marginalize_batch: bool = False,
        keep_gradnorm_constant: bool = False,
        eps: float = 1e-7,
    ) -> None:
        super().__init__(num_tasks)
        self.purity_fn = check_choice(self.name, "purity_fn", purity_fn, PURITY_FNS)
        self.k = check_number(self.name, "k", k)
        self.input = check_choice(self.name, "input", input, INPUTS)
        self.marginalize_batch = check_flag(self.name, "marginalize_batch", marginalize_batch)
        self.keep_gradnorm_constant = check_flag(self.name, "keep_gradnorm_constant", keep_gradnorm_constant)
        self.eps = check_number(self.name, "eps", eps, low_open=True)
        leaks = task_vector(self.name, "leak", leak, num_tasks, low=0.0, high=1.0)
        self.register_buffer("leak", leaks, persistent=False)
        self.leaks_nothing = not bool(leaks.any())  # no leak: a drop removes the whole gradient

    def check_level(self, level: str) -> None:
        if self.marginalize_batch and level != "feature":
            raise ValueError(f"{self.name}: marginalize_batch=True sums feature-level gradients over rows")

    def combine(self, grads: Gradients, ctx: StepContext | None = None) -> Tensor:
        self.check_grads(grads)
        ctx = ctx or StepContext()
        if isinstance(grads, FactoredGradients) and (self.marginalize_batch or not grads.rank_one):
            grads = grads.dense()
        update = self.batch_update(grads, ctx) if self.marginalize_batch else self.scalar_update(grads, ctx)
        if not self.keep_gradnorm_constant:
            return update
        ones = torch.ones(self.num_tasks, dtype=grads.dtype, device=grads.device)
        return _match_norm(update, grads.sum(0) if isinstance(grads, Tensor) else grads.weighted_sum(ones))

    def scalar_update(self, grads: Gradients, ctx: StepContext) -> Tensor:
        """Steps 1-6 per scalar, from four sums over the losses (no mask or signal tensor is built).

        ``s(A)`` is the same for every loss, so ``Σᵢ Gᵢ = s(A) Σᵢ ∇Lᵢ`` and ``Σᵢ |Gᵢ| = |s(A)| Σᵢ |∇Lᵢ|``;
        where the positive sign of G is kept, the dropped gradients are the ∇Lᵢ of sign opposite to
        ``sign(s(A))``, whose (1 − ℓᵢ)-weighted sum is a clamped part of ``Σᵢ (1 − ℓᵢ) ∇Lᵢ``.
        """
        share = 1.0 - self.leak.to(device=grads.device, dtype=grads.dtype)  # what a drop removes
        rows = torch.stack([torch.ones_like(share), share])
        if isinstance(grads, FactoredGradients):  # without a leak both rows are ones: sum once
            sums, positive_sums = grads.sign_sums(rows[:1] if self.leaks_nothing else rows)
            sums, positive_sums = sums.expand(2, -1), positive_sums.expand(2, -1)
        else:
            sums, positive_sums = _row_sums(grads.flatten(1), rows)
        (total, weighted), (positive, weighted_positive) = sums, positive_sums
        factor = self.input_factor(grads, ctx)
        signal, signal_abs = total, 2 * positive - total  # Σᵢ Gᵢ and Σᵢ |Gᵢ| without s(A)
        if factor is not None:
            factor = factor.reshape(-1)
            signal, signal_abs = signal * factor, signal_abs * factor.abs()
        kept = self.kept_sign(signal, signal_abs, ctx.generator)  # the kept sign of G
        if factor is not None:
            kept = kept * torch.sign(factor)  # the kept sign of ∇L; 0 where s(A) = 0: nothing dropped
        # the dropped gradients: the negative ones where kept = 1, the positive ones where kept = −1, none
        # where kept = 0; for finite gradients the products with 0 and ±1 are exact (the bits of
        # torch.where), and this arithmetic is ~7x faster than torch.where on a CPU
        dropped = kept.clamp_min(0) * (weighted - weighted_positive)
        dropped.addcmul_(kept.clamp_max(0), weighted_positive, value=-1.0)
        return (total - dropped).view(grads.shape[1:])

    def batch_update(self, grads: Tensor, ctx: StepContext) -> Tensor:
        """Steps 1-6 with the signal summed over the batch (dim 1): one mask per loss, tiled."""
        if ctx.level != "feature":
            raise ValueError(
                f"graddrop: marginalize_batch=True needs feature-level gradients [T, B, ...] and "
                f"ctx.level='feature', got level {ctx.level!r}"
            )
        factor = self.input_factor(grads, ctx)
        signal = (grads if factor is None else grads * factor).sum(1, keepdim=True)
        kept = self.kept_sign(signal.sum(0), signal.abs().sum(0), ctx.generator)
        dropped = grads * (signal * kept < 0)  # the dropped gradients, zeros elsewhere
        share = 1.0 - self.leak.to(device=grads.device, dtype=grads.dtype)
        return grads.sum(0) - torch.tensordot(share, dropped, dims=1)  # Σᵢ (ℓᵢ + (1 − ℓᵢ)Mᵢ) ∇Lᵢ

    def input_factor(self, grads: Gradients, ctx: StepContext) -> Tensor | None:
        """Step 1's s(A), shaped like one loss's gradient; ``None`` stands for all ones."""
        if self.input == "none" or ctx.activation is None:
            return None
        activation = ctx.activation.detach().to(grads.dtype)
        if activation.shape != grads.shape[1:]:
            raise ValueError(
                f"graddrop: ctx.activation has shape {tuple(activation.shape)}, expected "
                f"{tuple(grads.shape[1:])} (one task's gradient)"
            )
        return activation_sign(activation, self.eps) if self.input == "sign" else activation

    def kept_sign(self, total: Tensor, total_abs: Tensor, generator: torch.Generator | None) -> Tensor:
        """Steps 3-4: +1 where the positive sign is kept (``f(P) > U``), −1 where the negative one is."""
        keep = keep_probability(purity(total, total_abs, self.eps), self.purity_fn, self.k)
        draw = torch.rand(keep.shape, generator=generator, device=keep.device, dtype=keep.dtype)
        # −sign(U − f(P)), with U − f(P) = +0 at a tie: −1 there
        return torch.ones_like(keep).copysign_(draw - keep).neg_()


def _row_sums(matrix: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """``rows @ matrix`` and ``rows @ max(matrix, 0)``, each ``[R, P]``, by column blocks."""
    sums = matrix.new_empty(rows.shape[0], matrix.shape[1])
    positive_sums = torch.empty_like(sums)
    for part in column_blocks(matrix.shape[1], matrix.device):
        block = matrix[:, part]
        torch.mm(rows, block, out=sums[:, part])
        torch.mm(rows, block.clamp_min(0), out=positive_sums[:, part])
    return sums, positive_sums


def _match_norm(update: Tensor, reference: Tensor) -> Tensor:
    """``update`` rescaled to the norm of ``reference``; a zero update stays zero."""
    norm = torch.linalg.vector_norm(update)
    scale = torch.where(norm > 0, torch.linalg.vector_norm(reference) / norm, torch.ones_like(norm))
    return update * scale


@METHODS.register("random_graddrop")
class RandomGradDrop(GradDrop):
    """Random GradDrop, the control of Chen et al. 2020: :class:`GradDrop`
    with ``k = 0``, so each scalar keeps the positive or the negative gradients with probability ½
    whatever their purity. Same hyperparameters as ``graddrop`` (``k`` included, default 0)."""

    description = "GradDrop with k = 0: keep a random sign per scalar, whatever its purity"
    citation = "Chen et al. 2020, NeurIPS"

    def __init__(
        self,
        num_tasks: int,
        leak: float | list[float] = 0.0,
        purity_fn: str = "linear",
        k: float = 0.0,
        input: str = "sign",
        marginalize_batch: bool = False,
        keep_gradnorm_constant: bool = False,
        eps: float = 1e-7,
    ) -> None:
        super().__init__(num_tasks, leak, purity_fn, k, input, marginalize_batch, keep_gradnorm_constant, eps)
