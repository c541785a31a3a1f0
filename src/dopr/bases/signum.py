"""Signum (Bernstein et al., 2018, "signSGD: Compressed Optimisation for Non-Convex Problems").

    m_t = beta * m_{t-1} + (1 - beta) * g_t
    W_t = (1 - lr * wd) * W_{t-1} - lr * sign(m_t)

Weight decay is decoupled, as in AdamW. ``momentum=0`` gives signSGD.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["Signum"]


class Signum(Optimizer):
    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Signum: lr must be >= 0, got {lr!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Signum: momentum must be in [0, 1), got {momentum!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Signum: weight_decay must be >= 0, got {weight_decay!r}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.mul_(beta).add_(p.grad, alpha=1 - beta)
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(torch.sign(buf), alpha=-lr)
        return loss
