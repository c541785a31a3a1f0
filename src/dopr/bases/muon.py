"""Muon with a choice of the Newton-Schulz precision: ``torch.optim.Muon``'s update, float32 where bfloat16 is slow.

``torch.optim.Muon`` always runs Newton-Schulz in bfloat16. On CPUs without native bfloat16 matmuls
(AVX2, AVX-512 without BF16/AMX) a bfloat16 matmul is several times slower than a float32 one
(7-8.5x measured on this project's AVX2 machine), so Muon's step costs more than the whole forward
and backward. This class keeps torch's update rule, hyperparameters, defaults and state layout
(``momentum_buffer``), and runs Newton-Schulz in ``ns_dtype``:

    B_t = mu B_{t-1} + (1 - mu) G_t             momentum (as a lerp)
    U_t = G_t + mu (B_t - G_t)  (Nesterov) or B_t
    O_t = NewtonSchulz(U_t) in ns_dtype         quintic iteration, torch's coefficients
    W_t = (1 - lr wd) W_{t-1} - lr * adjust(shape) * O_t

The default ``ns_dtype=torch.bfloat16`` reproduces ``torch.optim.Muon`` bit for bit (so results made
with it stay reproducible); on such CPUs pass ``ns_dtype=torch.float32``, which is also more precise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["Muon", "zeropower_via_newton_schulz"]


def zeropower_via_newton_schulz(grad: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                                dtype: torch.dtype) -> Tensor:
    """The orthogonalised ``grad`` (``m x n``), in ``dtype``; the same operations as torch's Muon."""
    a, b, c = coefficients
    x = grad.to(dtype)
    transpose = grad.size(0) > grad.size(1)
    if transpose:
        x = x.T
    x.div_(x.norm().clamp(min=eps))  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, update, x, beta=a)
    return x.T if transpose else x


def _adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


class Muon(torch.optim.Muon):
    """``torch.optim.Muon`` with ``ns_dtype``: the precision of Newton-Schulz (see the module docstring)."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, *, ns_dtype: torch.dtype = torch.bfloat16,
                 **kwargs: Any) -> None:
        if not (isinstance(ns_dtype, torch.dtype) and ns_dtype.is_floating_point):
            raise ValueError(
                f"ns_dtype must be a floating torch.dtype (torch.bfloat16 or torch.float32), got {ns_dtype!r}")
        super().__init__(params, lr=lr, **kwargs)
        for group in self.param_groups:
            group.setdefault("ns_dtype", ns_dtype)
        self.defaults["ns_dtype"] = ns_dtype

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = group["lr"].item() if torch.is_tensor(group["lr"]) else group["lr"]
            mu = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.ndim != 2:
                    raise ValueError(f"Muon takes 2D parameters only, got a gradient of shape {tuple(grad.shape)}; "
                                     "route the others to AdamW (DoPr(base='muon') does)")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - mu)
                update = grad.lerp(buf, mu) if group["nesterov"] else buf
                update = zeropower_via_newton_schulz(update, group["ns_coefficients"], group["ns_steps"],
                                                     group["eps"], group["ns_dtype"])
                p.mul_(1 - lr * group["weight_decay"])
                # a group flagged "transposed" holds weights stored d_in x d_out (Hugging Face Conv1D)
                shape = p.shape[::-1] if group.get("transposed") else p.shape
                p.add_(update, alpha=-_adjusted_lr(lr, group["adjust_lr_fn"], shape))
        return loss
