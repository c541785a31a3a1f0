"""Damping is DoPr's dial (issue 23, item 1).

With ``lambda = gamma * tr(Sigma) / d``, ``M = G (Sigma + lambda I)^-1 = (G / lambda) (I + Sigma / lambda)^-1``, and
``||(I + Sigma / lambda)^-1 - I|| <= tr(Sigma) / lambda = d / gamma``: as gamma grows, the AP-gradient tends to
``G / lambda``, the gradient divided by one positive number per layer. What that limit is for each base:

- Signum (``sign``), Muon (Newton-Schulz after dividing by the norm) and AdaMuon (``sign`` before Newton-Schulz)
  are invariant to a positive scale of their input; Adam(W)'s ``m / (sqrt(v) + eps)`` is too, except for eps:
  Adam with ``eps`` on ``G / lambda`` is exactly Adam with ``eps * lambda`` on ``G``. So one step from a fresh state
  is the base's step, to rounding (Adam: with eps scaled by lambda, or eps -> 0).
- Over several steps, lambda_t follows each batch's ``tr(Sigma_t)`` (and, for hidden layers, the weights), and
  momentum and second moments mix the ``G_t / lambda_t`` of steps with different lambdas. The limit is then the
  base run on ``G_t / lambda_t``, to rounding; it is the plain base only where lambda_t does not change (a fixed
  batch into a one-layer model), and the last test here shows the difference where it does.

The small-damping end is full AP: at gamma = 0.1 every base's step is far from the plain base's, and the distance
falls as gamma grows (the dial). gamma = 1e12 keeps the ``d / gamma`` correction (d <= 9 here) at ~1e-11, below
the tolerances; the models are float64 and the eps of Adam and Muon's norm clamp are set to 1e-30 where the limit
without eps is meant, because ``G / lambda`` at gamma = 1e12 is ~1e-13, where the default eps (1e-8, 1e-7) would
dominate the update instead.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from dopr import DoPr
from dopr.routing import DEFAULT_AUX_PATTERNS, build_bases

BASES = ("adamw", "signum", "muon", "adamuon")
LARGE = 1e12
TINY_EPS = 1e-30
LR = 1e-2
# float64 with a d / gamma ~ 1e-11 correction: differences are rounding, well under 1e-9 of the step. Signum is
# compared with torch.equal (a sign either flips or it does not).
REL_TOL = 1e-9

Batch = tuple[torch.Tensor, torch.Tensor]


def base_kwargs(base: str, eps_limit: bool = True) -> dict:
    """The base's own options (float64 Newton-Schulz for the Muon family), with eps -> 0 if ``eps_limit``."""
    kw: dict = {}
    if base == "muon":
        kw["ns_dtype"] = torch.float64
        if eps_limit:
            kw["eps"] = TINY_EPS  # clamp of the norm before Newton-Schulz
    if base in ("adamw", "adamuon") and eps_limit:
        kw["eps"] = TINY_EPS
    return kw


def aux_kwargs(base: str, eps_limit: bool = True) -> dict | None:
    """The AdamW that takes the biases of the matrix bases: eps -> 0 as well."""
    return {"eps": TINY_EPS} if eps_limit and base in ("muon", "adamuon") else None


def mlp(seed: int = 0, widths: tuple[int, ...] = (5, 8, 8, 3)) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers += [nn.Linear(a, b)] + ([nn.Tanh()] if i < len(widths) - 2 else [])
    return nn.Sequential(*layers).double()


def batches(n: int, seed: int = 1, d_in: int = 5, d_out: int = 3) -> list[Batch]:
    """``n`` batches whose input scale changes from batch to batch (so tr(Sigma_t), and lambda_t, do too)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, d_in, generator=g, dtype=torch.float64) * (1.0 + 0.5 * t),
             torch.randn(32, d_out, generator=g, dtype=torch.float64)) for t in range(n)]


def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def train_dopr(model: nn.Module, data: list[Batch], base: str, damping: float, eps_limit: bool = True) -> nn.Module:
    opt = DoPr(model, base=base, lr=LR, damping=damping, aux_kwargs=aux_kwargs(base, eps_limit),
               **base_kwargs(base, eps_limit))
    for batch in data:
        opt.zero_grad()
        loss(model, batch).backward()
        opt.step()
    opt.remove()
    return model


def layer_lambdas(model: nn.Module, batch: Batch, damping: float) -> dict[nn.Linear, float]:
    """Each Linear's lambda for this batch, computed here from its input (not read from DoPr): ``damping *
    tr(Sigma) / d`` with Sigma the second moment of ``[z, 1]`` (the bias column counts in ``d``)."""
    inputs: dict[nn.Linear, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: inputs.__setitem__(mod, args[0].detach()))
             for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(batch[0])
    for h in hooks:
        h.remove()
    out = {}
    for m, z in inputs.items():
        if m.bias is not None:
            z = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], dim=1)
        out[m] = damping * float((z * z).sum() / len(z)) / z.shape[1]
    return out


def train_base(model: nn.Module, data: list[Batch], base: str, eps_limit: bool = True,
               scale: Callable[[nn.Module, Batch], None] | None = None) -> nn.Module:
    """The plain base with DoPr's routing (the bench's plain arms), optionally with each step's gradients rescaled
    by ``scale(model, batch)`` before the step."""
    opts = [o for _, o in build_bases(model, base, LR, base_kwargs(base, eps_limit), None, aux_kwargs(base, eps_limit),
                                      DEFAULT_AUX_PATTERNS)[0]]
    for batch in data:
        for o in opts:
            o.zero_grad()
        loss(model, batch).backward()
        if scale is not None:
            scale(model, batch)
        for o in opts:
            o.step()
    return model


def divide_by_lambda(damping: float) -> Callable[[nn.Module, Batch], None]:
    """Every Linear's gradients divided by its lambda on this batch: what AP tends to as damping grows."""

    def scale(model: nn.Module, batch: Batch) -> None:
        for m, lam in layer_lambdas(model, batch, damping).items():
            for p in m.parameters():
                p.grad.div_(lam)

    return scale


def step_difference(a: nn.Module, b: nn.Module, start: nn.Module) -> float:
    """max |a - b| over the parameters, relative to the largest move of ``b`` from ``start``."""
    diff = max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    moved = max(float((q - s).detach().abs().max()) for q, s in zip(b.parameters(), start.parameters(), strict=True))
    assert moved > 0
    return diff / moved


def assert_same_steps(base: str, a: nn.Module, b: nn.Module, start: nn.Module) -> None:
    if base == "signum":
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(p, q)
    else:
        assert step_difference(a, b, start) < REL_TOL


@pytest.mark.parametrize("base", BASES)
def test_first_step_at_large_damping_is_the_base(base: str) -> None:
    start = mlp()
    data = batches(1)
    dopr = train_dopr(copy.deepcopy(start), data, base, LARGE)
    plain = train_base(copy.deepcopy(start), data, base)
    assert_same_steps(base, dopr, plain, start)


@pytest.mark.parametrize("base", BASES)
def test_small_damping_is_full_ap_and_the_dial_moves_towards_the_base(base: str) -> None:
    """gamma = 0.1 steps far from the base (AP at full strength); the distance does not grow as gamma grows, and is
    rounding at LARGE. A DoPr that ignored damping, or applied AP undamped, fails one end or the other. Five steps
    of one layer on a fixed batch (lambda constant, so the limit is the plain base); the sign-based bases (Signum,
    AdaMuon's weights) move in jumps, so the middle is only required not to move away (5% slack)."""
    start = mlp(widths=(5, 3))
    data = batches(1) * 5
    plain = train_base(copy.deepcopy(start), data, base)
    gaps = [step_difference(train_dopr(copy.deepcopy(start), data, base, g), plain, start)
            for g in (0.1, 10.0, 1e3, 1e6, LARGE)]
    assert gaps[0] > 0.2, f"damping 0.1 should be far from the plain {base} steps, got {gaps}"
    assert all(y <= 1.05 * x for x, y in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] == 0 if base == "signum" else gaps[-1] < REL_TOL, gaps


@pytest.mark.parametrize("base", BASES)
def test_several_steps_at_large_damping_are_the_base_on_g_over_lambda(base: str) -> None:
    """The limit over steps with lambda_t changing from batch to batch: the base on ``G_t / lambda_t``."""
    start = mlp()
    data = batches(5)
    dopr = train_dopr(copy.deepcopy(start), data, base, LARGE)
    ref = train_base(copy.deepcopy(start), data, base, scale=divide_by_lambda(LARGE))
    assert_same_steps(base, dopr, ref, start)


@pytest.mark.parametrize("base", BASES)
def test_several_steps_with_a_constant_lambda_are_the_plain_base(base: str) -> None:
    """One layer, one fixed batch: Sigma and lambda are the same every step, so DoPr at large damping is the
    plain base over every step, momentum and second moments included."""
    start = mlp(widths=(5, 3))
    data = batches(1) * 5
    dopr = train_dopr(copy.deepcopy(start), data, base, LARGE)
    plain = train_base(copy.deepcopy(start), data, base)
    assert_same_steps(base, dopr, plain, start)


def test_adam_eps_is_scaled_by_lambda() -> None:
    """With Adam's default eps, DoPr-AdamW at large damping is AdamW with eps * lambda (exactly: Adam is
    homogeneous in (G, eps)), up to the d / gamma = 6e-6 correction of M at this gamma (tolerance 1e-4 of the
    step). At gamma = 1e6 on these inputs eps * lambda is ~1e-2, comparable to |G|: far from plain AdamW, so the
    dial's limit holds for Adam only while eps * lambda << |G| (at the bench's gamma <= 10 and standardized inputs,
    eps * lambda ~ 1e-7)."""
    gamma, eps = 1e6, 1e-8
    start = mlp(widths=(5, 3))
    data = batches(1) * 5
    dopr = train_dopr(copy.deepcopy(start), data, "adamw", gamma, eps_limit=False)
    (lam,) = layer_lambdas(start, data[0], gamma).values()
    scaled = copy.deepcopy(start)
    opt = torch.optim.AdamW(scaled.parameters(), lr=LR, eps=eps * lam)
    for batch in data:
        opt.zero_grad()
        loss(scaled, batch).backward()
        opt.step()
    assert step_difference(dopr, scaled, start) < 1e-4
    plain = train_base(copy.deepcopy(start), data, "adamw", eps_limit=False)
    assert step_difference(dopr, plain, start) > 1e-3


@pytest.mark.parametrize("base", ["adamw", "signum", "muon"])
def test_with_lambda_changing_the_limit_is_not_the_plain_base(base: str) -> None:
    """What the limit is not: with batches of changing scale, DoPr at large damping departs from the plain base
    over several steps, because the momentum (and Adam's second moment) weigh each step's gradient by 1/lambda_t.
    (AdaMuon takes the sign of its momentum buffer; the departure exists there too, but whether a sign flips on
    these five batches is not the point.) If DoPr ever normalized M by lambda, this test would fail: update the
    options page with it."""
    start = mlp()
    data = batches(5)
    dopr = train_dopr(copy.deepcopy(start), data, base, LARGE)
    plain = train_base(copy.deepcopy(start), data, base)
    assert step_difference(dopr, plain, start) > 1e-3
