"""AdaMuon (Si, Zhang & Shen, 2025, "AdaMuon: Adaptive Muon Optimizer", arXiv:2507.11005).

For a 2D weight ``W`` (``m x n``) with gradient ``G``:

    B_t = mu * B_{t-1} + G_t                    momentum
    U_t = G_t + mu * B_t  (Nesterov) or B_t
    O_t = NewtonSchulz(sign(U_t))               sign-stabilised orthogonalisation
    V_t = beta2 * V_{t-1} + (1 - beta2) O_t**2  element-wise second moment of O
    O^_t = O_t / (sqrt(V_t) + eps)
    W_t = (1 - lr * wd) W_{t-1} - lr * 0.2 * sqrt(m n) / ||O^_t||_F * O^_t

The last factor is the RMS alignment: the update has RMS 0.2, like AdamW's, so AdamW learning rates
and weight decay carry over. Only 2D parameters are accepted (route others to AdamW, as with Muon).
Newton-Schulz runs in float32 (bfloat16 matmuls are slower than float32 on CPUs without AMX).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["AdaMuon", "newton_schulz"]

_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximate the orthogonal polar factor of ``g`` (``m x n``) by a quintic Newton-Schulz iteration."""
    a, b, c = _NS_COEFFICIENTS
    x = g.float()
    transpose = x.shape[0] > x.shape[1]
    if transpose:
        x = x.T
    x = x / (x.norm() + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transpose else x


class AdaMuon(Optimizer):
    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.95,
        beta2: float = 0.95,
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        nesterov: bool = True,
        ns_steps: int = 5,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"AdaMuon: lr must be >= 0, got {lr!r}")
        if not 0.0 <= momentum < 1.0 or not 0.0 <= beta2 < 1.0:
            raise ValueError(f"AdaMuon: momentum and beta2 must be in [0, 1), got {momentum!r}, {beta2!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"AdaMuon: weight_decay must be >= 0, got {weight_decay!r}")
        defaults = dict(lr=lr, momentum=momentum, beta2=beta2, weight_decay=weight_decay, eps=eps,
                        nesterov=nesterov, ns_steps=ns_steps)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        f"AdaMuon only accepts 2D parameters, got shape {tuple(p.shape)}; "
                        "give biases, norms and conv kernels to AdamW (DoPr(base='adamuon') does this)"
                    )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["momentum_buffer"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(p.grad)
                u = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                o = newton_schulz(torch.sign(u), group["ns_steps"])
                v = state["exp_avg_sq"]
                v.mul_(group["beta2"]).addcmul_(o, o, value=1 - group["beta2"])
                o_hat = o / (v.sqrt() + group["eps"])
                scale = 0.2 * (p.numel() ** 0.5) / (o_hat.norm() + group["eps"])
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_((o_hat * scale).to(p.dtype), alpha=-group["lr"])
        return loss
