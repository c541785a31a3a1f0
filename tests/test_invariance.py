"""The invariance DoPr promises, and its reduction to the base optimizer on whitened inputs."""

import copy

import pytest
import torch
from torch import nn

from dopr import DoPr

D = 6


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, D, generator=g, dtype=torch.float64) * torch.logspace(1, -1, D, dtype=torch.float64)
    y = torch.sin(x @ torch.randn(D, 2, generator=g, dtype=torch.float64))
    a = torch.randn(D, D, generator=g, dtype=torch.float64) + 3 * torch.eye(D, dtype=torch.float64)
    c = torch.randn(D, generator=g, dtype=torch.float64)
    xt = torch.randn(32, D, generator=g, dtype=torch.float64)
    return x, y, a, c, xt


def _twins(bias: bool, a: torch.Tensor, c: torch.Tensor):
    """A model and its reparametrised twin: first layer W A^-1 (and b - W A^-1 c) on inputs A x + c."""
    torch.manual_seed(0)
    m1 = nn.Sequential(nn.Linear(D, 12, bias=bias), nn.Tanh(), nn.Linear(12, 2)).double()
    m2 = copy.deepcopy(m1)
    with torch.no_grad():
        w = m1[0].weight @ torch.linalg.inv(a)
        m2[0].weight.copy_(w)
        if bias:
            m2[0].bias.copy_(m1[0].bias - w @ c)
    return m1, m2


def _prediction_gaps(make_opt, bias: bool, steps: int = 15) -> list[float]:
    x, y, a, c, xt = _data()
    shift = c if bias else torch.zeros(D, dtype=torch.float64)
    m1, m2 = _twins(bias, a, shift)
    o1, o2 = make_opt(m1), make_opt(m2)
    gaps = []
    for _ in range(steps):
        for m, o, inp in ((m1, o1, x), (m2, o2, x @ a.T + shift)):
            o.zero_grad()
            ((m(inp) - y) ** 2).mean().backward()
            o.step()
        with torch.no_grad():
            p1, p2 = m1(xt), m2(xt @ a.T + shift)
            gaps.append(((p1 - p2).norm() / p1.norm()).item())
    return gaps


@pytest.mark.parametrize("bias", [False, True], ids=["linear-map", "affine-map-with-bias"])
def test_dopr_sgd_is_invariant_to_input_reparametrisation(bias):
    gaps = _prediction_gaps(lambda m: DoPr(m, base="sgd", lr=0.05, damping=1e-12), bias)
    assert max(gaps) < 1e-7, gaps


@pytest.mark.parametrize("make_opt", [
    lambda m: torch.optim.SGD(m.parameters(), lr=0.05),
    lambda m: torch.optim.Adam(m.parameters(), lr=0.01),
], ids=["sgd", "adam"])
def test_plain_optimizers_are_not_invariant(make_opt):
    gaps = _prediction_gaps(make_opt, bias=True)
    assert gaps[-1] > 1e-3, gaps


@pytest.mark.parametrize("base,kw", [("adamw", {"weight_decay": 0.01}), ("sgd", {"momentum": 0.9}),
                                     ("signum", {}), ("adam", {})])
def test_whitened_inputs_reduce_to_the_base_optimizer(base, kw):
    # Sigma = I exactly and no damping: M = G, so DoPr-X must take X's step
    g = torch.Generator().manual_seed(2)
    n = 64
    q, _ = torch.linalg.qr(torch.randn(n, D, generator=g, dtype=torch.float64))
    x = q * n**0.5
    assert torch.allclose(x.T @ x / n, torch.eye(D, dtype=torch.float64), atol=1e-12)
    y = torch.randn(n, 3, generator=g, dtype=torch.float64)
    m1 = nn.Linear(D, 3, bias=False).double()
    m2 = copy.deepcopy(m1)
    o1 = DoPr(m1, base=base, lr=0.01, damping=0.0, **kw)
    o2 = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD, "adam": torch.optim.Adam}.get(base)
    if o2 is None:
        from dopr import Signum as o2
    o2 = o2(m2.parameters(), lr=0.01, **kw)
    for _ in range(5):
        for m, o in ((m1, o1), (m2, o2)):
            o.zero_grad()
            ((m(x) - y) ** 2).mean().backward()
            o.step()
    assert torch.allclose(m1.weight, m2.weight, rtol=0, atol=1e-12)
