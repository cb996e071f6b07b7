"""Mixed precision (``train: {amp: bf16|fp16}``): the trunk's forward under ``torch.autocast``, the rest
in float32.

The trunk is the model's cost; its output z is cast back to float32, so the heads, the losses, the
per-task gradients (w.r.t. z or the trunk's float32 parameters) and every method's arithmetic run in
float32 (see Micikevicius et al. 2018, *Mixed Precision Training*, ICLR: float32 master weights, reduced
precision forward and backward).

fp16's narrow range needs a gradient scale (Micikevicius et al. 2018, §3.2). ``torch.amp.GradScaler``
multiplies one loss and divides an optimiser's ``.grad`` afterwards; here the per-task gradients must
be unscaled *before* the method sees them (a Jacobian row taken through the trunk included), so the
scale is applied where gradients enter the autocast region (z) and removed where they leave it (the
trunk's parameters), with GradScaler's dynamic rule (:class:`GradScale`). Outside the trunk every
gradient is then the true one.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""``amp`` setting -> the autocast dtype."""


class GradScale:
    """The dynamic gradient scale of fp16 training, with ``torch.amp.GradScaler``'s rule and defaults:
    start at ``2**16``; a step with a non-finite gradient is skipped and the scale multiplied by
    ``backoff``; after ``interval`` finite steps in a row it is multiplied by ``growth``."""

    def __init__(
        self, init: float = 2.0**16, growth: float = 2.0, backoff: float = 0.5, interval: int = 2000
    ) -> None:
        self.value, self.growth, self.backoff, self.interval = init, growth, backoff, interval
        self.finite_steps = 0

    def scale_up(self, grad: Tensor) -> Tensor:
        return grad * self.value

    def scale_down(self, grad: Tensor) -> Tensor:
        return grad / self.value

    def update(self, params: Iterable[Tensor]) -> bool:
        """Whether every ``.grad`` of ``params`` is finite (else the step must be skipped); adjusts the
        scale."""
        grads = [p.grad for p in params if p.grad is not None]
        finite = not grads or bool(torch.stack([g.isfinite().all() for g in grads]).all())
        if not finite:
            self.value *= self.backoff
            self.finite_steps = 0
        else:
            self.finite_steps += 1
            if self.finite_steps == self.interval:
                self.value *= self.growth
                self.finite_steps = 0
        return finite


class AutocastTrunk(nn.Module):
    """``module`` run under ``torch.autocast(device_type, dtype)``; its output is returned in float32.

    With a ``scale`` (fp16), the gradient reaching the output is multiplied by the scale and the
    gradients of the module's parameters divided by it, so the reduced-precision backward runs scaled
    and every gradient outside the module is the true one, in ``.grad`` and in ``autograd.grad``.
    """

    def __init__(
        self, module: nn.Module, device_type: str, dtype: torch.dtype, scale: GradScale | None
    ) -> None:
        super().__init__()
        self.module = module
        self.device_type, self.dtype, self.scale = device_type, dtype, scale
        if scale is not None:
            for p in module.parameters():
                if p.requires_grad:
                    p.register_hook(scale.scale_down)

    def forward(self, inputs: Tensor | None) -> Tensor:
        with torch.autocast(self.device_type, self.dtype):
            z = self.module(inputs)
        z = z.float()
        if self.scale is not None and z.requires_grad:
            z.register_hook(self.scale.scale_up)
        return z
