"""Small models and training loops shared by the tests."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from dopr import DoPr
from dopr.reference import ReferenceAP
from dopr.routing import DEFAULT_AUX_PATTERNS, build_bases


class QKV(nn.Module):
    """Three projections that read one input, as in attention."""

    def __init__(self, d: int = 6, bias: bool = True) -> None:
        super().__init__()
        self.inp = nn.Linear(5, d)
        self.q, self.k, self.v = nn.Linear(d, 4, bias=bias), nn.Linear(d, 4, bias=bias), nn.Linear(d, 4, bias=bias)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        att = torch.softmax(self.q(h) * self.k(h), dim=-1)
        return self.head(att * self.v(h))


def mlp(bias: bool = True, d_in: int = 5) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, 8, bias=bias), nn.Tanh(), nn.Linear(8, 8, bias=bias), nn.Tanh(),
                         nn.Linear(8, 3, bias=bias))


def train_fast(model: nn.Module, batches: list, steps: int, base: str = "sgd", lr: float = 0.05,
               damping: float = 1e-3, loss_fn: Callable | None = None, **kw) -> DoPr:
    opt = DoPr(model, base=base, lr=lr, damping=damping, **kw)
    loss_fn = loss_fn or (lambda out, y: ((out - y) ** 2).mean())
    for step in range(steps):
        opt.zero_grad()
        for x, y in batches[step % len(batches)]:
            loss_fn(model(x), y).backward()
        opt.step()
    return opt


def train_reference(model: nn.Module, batches: list, steps: int, base: str = "sgd", lr: float = 0.05,
                    damping: float = 1e-3, loss_fn: Callable | None = None, max_block: int | None = None,
                    **kw) -> None:
    ref = ReferenceAP(model, damping, max_block=max_block)
    opts = [o for _, o in build_bases(model, base, lr, kw, None, None, DEFAULT_AUX_PATTERNS)[0]]
    loss_fn = loss_fn or (lambda out, y: ((out - y) ** 2).mean())
    for step in range(steps):
        for o in opts:
            o.zero_grad()
        for x, y in batches[step % len(batches)]:
            loss_fn(model(x), y).backward()
        ref.precondition_()
        for o in opts:
            o.step()


def max_rel_diff(a: nn.Module, b: nn.Module) -> float:
    return max(((p - q).norm() / q.norm().clamp_min(1e-30)).item() for p, q in zip(a.parameters(), b.parameters()))


def twin(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def scaled_batches(d_in=5, d_out=3, sizes=(16,), n_batches=3, scale=True, gen_seed=1):
    """Micro-batches of (x, y) in float64, x with column scales from 10 to 0.1 (an ill-conditioned Sigma)."""
    g = torch.Generator().manual_seed(gen_seed)
    scales = torch.logspace(1, -1, d_in, dtype=torch.float64) if scale else torch.ones(d_in, dtype=torch.float64)
    return [[(torch.randn(n, d_in, generator=g, dtype=torch.float64) * scales,
              torch.randn(n, d_out, generator=g, dtype=torch.float64)) for n in sizes] for _ in range(n_batches)]
