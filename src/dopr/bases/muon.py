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
with it stay reproducible); on such CPUs pass ``ns_dtype=torch.float32``, which is also more precise, or
``ns_dtype="auto"``: bfloat16 on CUDA and on CPUs whose bfloat16 matmuls are at least as fast as float32's (native
bfloat16, e.g. AMX), else float32 (:func:`fast_ns_dtype`, decided once per process by a short matmul probe).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["Muon", "fast_ns_dtype", "matmul_probe", "zeropower_via_newton_schulz"]


@functools.cache
def matmul_probe(size: int = 256, reps: int = 5) -> dict[str, float]:
    """Best-of-``reps`` milliseconds of one ``size``-square matmul in bfloat16 and in float32 on this CPU."""
    out = {}
    a = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    for name in ("bfloat16", "float32"):
        x = a.to(getattr(torch, name))
        x @ x  # warm-up
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(4):
                x @ x
            best = min(best, (time.perf_counter() - t0) / 4)
        out[name] = best * 1e3
    return out


def fast_ns_dtype(device: torch.device | str = "cpu") -> torch.dtype:
    """The Newton-Schulz precision ``ns_dtype="auto"`` picks on ``device``: bfloat16 on CUDA, and on a CPU whose
    bfloat16 matmuls are at least as fast as float32's; else float32 (torch's bfloat16 matmul is 2-8x slower
    than float32's on AVX2/AVX-512 CPUs without native bfloat16)."""
    if torch.device(device).type != "cpu":
        return torch.bfloat16
    ms = matmul_probe()
    return torch.bfloat16 if ms["bfloat16"] <= ms["float32"] else torch.float32


def zeropower_via_newton_schulz(grad: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                                dtype: torch.dtype) -> Tensor:
    """The orthogonalised ``grad`` (``m x n``), in ``dtype``; the same operations as torch's Muon. A bank of
    matrices (``E x m x n``, mixture-of-experts weights) is orthogonalised matrix by matrix, in one batched call."""
    a, b, c = coefficients
    if grad.ndim == 3:
        return _batched_newton_schulz(grad, coefficients, steps, eps, dtype)
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


def _batched_newton_schulz(grad: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                           dtype: torch.dtype) -> Tensor:
    a, b, c = coefficients
    x = grad.to(dtype)
    transpose = grad.size(-2) > grad.size(-1)
    if transpose:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # each matrix's spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.mT
        update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, update, x, beta=a)
    return x.mT if transpose else x


def _adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


class Muon(torch.optim.Muon):
    """``torch.optim.Muon`` with ``ns_dtype``: the precision of Newton-Schulz (see the module docstring)."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, *, ns_dtype: torch.dtype | str = torch.bfloat16,
                 **kwargs: Any) -> None:
        if not (ns_dtype == "auto" or (isinstance(ns_dtype, torch.dtype) and ns_dtype.is_floating_point)):
            raise ValueError(f"ns_dtype must be a floating torch.dtype (torch.bfloat16 or torch.float32) or 'auto' "
                             f"(the faster of the two on this hardware), got {ns_dtype!r}")
        try:
            super().__init__(params, lr=lr, **kwargs)
        except ValueError as err:  # torch's Muon refuses 3-D banks after building its groups; this step takes them
            if not str(err).startswith("Muon only supports 2D") or not hasattr(self, "param_groups"):
                raise
            shapes = [tuple(p.shape) for g in self.param_groups for p in g["params"] if p.ndim not in (2, 3)]
            if shapes:
                raise ValueError(f"Muon takes 2D parameters and 3D banks of them (E x m x n), got a parameter of "
                                 f"shape {shapes[0]}") from None
        if ns_dtype == "auto":
            first = next((p for g in self.param_groups for p in g["params"]), None)
            ns_dtype = fast_ns_dtype(first.device if first is not None else "cpu")
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
                if grad.ndim not in (2, 3):
                    raise ValueError(f"Muon takes 2D parameters (and 3D banks of them), got a gradient of shape "
                                     f"{tuple(grad.shape)}; route the others to AdamW (DoPr(base='muon') does)")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - mu)
                update = grad.lerp(buf, mu) if group["nesterov"] else buf
                update = zeropower_via_newton_schulz(update, group["ns_coefficients"], group["ns_steps"],
                                                     group["eps"], group["ns_dtype"])
                p.mul_(1 - lr * group["weight_decay"])
                # a group flagged "transposed" holds weights stored d_in x d_out (Hugging Face Conv1D, gpt-oss's
                # expert banks); a bank's lr scaling is that of one of its matrices
                shape = p.shape[-2:][::-1] if group.get("transposed") else p.shape[-2:]
                p.add_(update, alpha=-_adjusted_lr(lr, group["adjust_lr_fn"], shape))
        return loss
