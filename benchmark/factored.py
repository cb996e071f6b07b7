"""Per-task gradients at z kept as the linear heads' factors, never materialised as ``[T, *z.shape]``.

A head linear in z, ``outᵢ = z Wᵢᵀ + bᵢ`` (``Wᵢ`` ``[k, D]``), back-propagates ``∇_z Lᵢ = Cᵢ Wᵢ`` with
``Cᵢ = ∂Lᵢ/∂outᵢ`` ``[M, k]`` (M rows of z). With one output per head (k = 1) every row of ``∇_z Lᵢ`` is
``Wᵢ`` scaled: rank one. What the feature-level methods need then follows from the factors, each
in O(T·(M + D)) memory instead of the ``T·M·D`` of the dense gradients:

- the Gramian ``Gᵢⱼ = Σ_ab (Cᵢᵀ Cⱼ)_ab (Wᵢ Wⱼᵀ)_ab`` (``(C Cᵀ) ∘ (W Wᵀ)`` for k = 1);
- a weighted sum ``Σᵢ aᵢ Cᵢ Wᵢ``, one ``[M, T k] @ [T k, D]`` product;
- GradDrop's sums of the positive parts (k = 1): ``|c w| = |c| |w|`` for scalars, so
  ``Σᵢ aᵢ |gᵢ| = (a |C|)ᵀ |W|``, one more product, and ``max(g, 0) = (g + |g|) / 2``.

Each is exact algebra; only the floating-point summation order differs from the dense computation,
so results agree to rounding, not bit for bit: methods get the factors only when a run sets
``train: {factored_heads: true}`` and they declare ``Method.accepts_factored``; every other method gets
:meth:`FactoredGradients.dense`, one batched product (for k = 1 the bits of the heads' own backward:
:func:`benchmark.gradients.z_gradients`). Heads that are not linear keep the dense stack of their T
gradients: gathering column blocks from the T separate tensors instead measured slower on a CPU than
stacking once (T = 40, z 256×512: GradDrop's sums 5.8 vs 2.8 ms, the Gramian 7.1 vs 4.9 ms, the stack
0.7 ms). No library offers this factorisation (TorchJD and LibMTL always materialise the Jacobian),
hence this module.
"""

from __future__ import annotations

import torch
from torch import Tensor


class FactoredGradients:
    """The T gradients ``∇_z Lᵢ = Cᵢ Wᵢ`` at z ``[*lead, D]`` of heads linear in z.

    Args:
        coefficients: ``[T, *lead, k]``, ``∂Lᵢ/∂outᵢ`` per row of z.
        weights: ``[T, k, D]``, the heads' weights (detached).

    Quacks like the dense ``[T, *z.shape]`` tensor where methods look at it: :attr:`shape`,
    :meth:`dim`, :attr:`dtype`, :attr:`device`, :meth:`float`.
    """

    def __init__(self, coefficients: Tensor, weights: Tensor) -> None:
        num_tasks, outputs, width = weights.shape
        if coefficients.shape[0] != num_tasks or coefficients.shape[-1] != outputs:
            raise ValueError(
                f"coefficients {tuple(coefficients.shape)} do not match head weights {tuple(weights.shape)}: "
                "expected [T, *rows, k] for weights [T, k, D]"
            )
        self.coefficients, self.weights = coefficients, weights
        self.shape = torch.Size((num_tasks, *coefficients.shape[1:-1], width))

    @property
    def dtype(self) -> torch.dtype:
        return self.coefficients.dtype

    @property
    def device(self) -> torch.device:
        return self.coefficients.device

    @property
    def rank_one(self) -> bool:
        """One output per head (k = 1): every row of a gradient is its head's weight, scaled."""
        return self.weights.shape[1] == 1

    def dim(self) -> int:
        return len(self.shape)

    def float(self) -> FactoredGradients:
        return FactoredGradients(self.coefficients.float(), self.weights.float())

    def _rows(self) -> Tensor:
        """The coefficients as ``[T, M, k]``."""
        return self.coefficients.reshape(self.shape[0], -1, self.weights.shape[1])

    def dense(self) -> Tensor:
        """The gradients ``[T, *z.shape]`` (what the heads' backward would give, to rounding)."""
        return torch.bmm(self._rows(), self.weights).view(self.shape)

    def gramian(self) -> Tensor:
        """``G = J Jᵀ`` ``[T, T]`` of the flattened gradients, from the factors."""
        num_tasks, outputs = self.weights.shape[:2]
        coefficients = self._rows().transpose(1, 2).reshape(num_tasks * outputs, -1)  # [T k, M]
        weights = self.weights.reshape(num_tasks * outputs, -1)  # [T k, D]
        products = (coefficients @ coefficients.T) * (weights @ weights.T)
        return products.view(num_tasks, outputs, num_tasks, outputs).sum((1, 3))

    def weighted_sum(self, weights: Tensor) -> Tensor:
        """``Σᵢ weightsᵢ ∇_z Lᵢ``, shaped like z."""
        scaled = self._rows() * weights.to(self.dtype).view(-1, 1, 1)  # [T, M, k]
        flat = scaled.transpose(0, 1).flatten(1) @ self.weights.flatten(0, 1)  # [M, T k] @ [T k, D]
        return flat.view(self.shape[1:])

    def sign_sums(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """``rows @ J`` and ``rows @ max(J, 0)`` ``[R, P]`` of the flattened gradients J ``[T, P]``, for
        ``rows`` ``[R, T]``: rank one only (see the module docstring)."""
        if not self.rank_one:
            raise ValueError(f"sign_sums needs one output per head, the heads have {self.weights.shape[1]}")
        coefficients, weights = self._rows()[..., 0], self.weights[:, 0]  # [T, M], [T, D]
        rows = rows.to(self.dtype)[:, :, None]
        sums = torch.matmul((rows * coefficients).transpose(1, 2), weights).flatten(1)  # [R, M D]
        absolute = torch.matmul((rows * coefficients.abs()).transpose(1, 2), weights.abs()).flatten(1)
        return sums, (sums + absolute).mul_(0.5)  # max(g, 0) = (g + |g|) / 2


Gradients = Tensor | FactoredGradients
"""What a method's ``combine`` receives: the dense ``[T, *shape]`` tensor, or (methods that accept it)
the heads' factors."""


def gramian(grads: Gradients) -> Tensor:
    """``J Jᵀ`` ``[T, T]`` of the flattened per-task gradients."""
    if isinstance(grads, FactoredGradients):
        return grads.gramian()
    matrix = grads.flatten(1)
    return matrix @ matrix.T


def weighted_sum(weights: Tensor, grads: Gradients) -> Tensor:
    """``Σᵢ weightsᵢ gᵢ``, shaped like one task's gradient."""
    if isinstance(grads, FactoredGradients):
        return grads.weighted_sum(weights)
    return (weights.to(grads.dtype) @ grads.flatten(1)).view(grads.shape[1:])


def dense(grads: Gradients) -> Tensor:
    """The per-task gradients as one ``[T, *shape]`` tensor."""
    return grads.dense() if isinstance(grads, FactoredGradients) else grads
