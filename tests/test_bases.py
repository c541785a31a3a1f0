"""Signum and AdaMuon against their published update rules, written out step by step here."""

import math

import pytest
import torch

from dopr import AdaMuon, Signum


def _grads(shape, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(steps)]


def test_signum_follows_bernstein_et_al():
    w0 = torch.randn(4, 3, dtype=torch.float64)
    p = torch.nn.Parameter(w0.clone())
    opt = Signum([p], lr=0.1, momentum=0.8, weight_decay=0.05)
    w, m = w0.clone(), torch.zeros_like(w0)
    for g in _grads((4, 3), 6):
        p.grad = g.clone()
        opt.step()
        m = 0.8 * m + 0.2 * g
        w = w * (1 - 0.1 * 0.05) - 0.1 * torch.sign(m)
        assert torch.equal(p.detach(), w)


def test_signum_without_momentum_is_signsgd():
    p = torch.nn.Parameter(torch.zeros(5))
    opt = Signum([p], lr=0.5, momentum=0.0)
    p.grad = torch.tensor([-2.0, 0.0, 3.0, -1e-9, 7.0])
    opt.step()
    assert torch.equal(p.detach(), torch.tensor([0.5, 0.0, -0.5, 0.5, -0.5]))


def _ns(x, steps=5):
    # quintic Newton-Schulz as in Muon, on the wide orientation, in float32 like the implementation
    a, b, c = 3.4445, -4.7750, 2.0315
    x = x.float()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + b * (s @ x) + c * (s @ (s @ x))
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(6, 4), (3, 8)])
def test_adamuon_follows_si_et_al(shape):
    lr, mu, beta2, wd, eps = 0.02, 0.9, 0.95, 0.1, 1e-8
    w0 = torch.randn(*shape)
    p = torch.nn.Parameter(w0.clone())
    opt = AdaMuon([p], lr=lr, momentum=mu, beta2=beta2, weight_decay=wd, eps=eps)
    w, b, v = w0.clone(), torch.zeros(shape), torch.zeros(shape)
    for g in _grads(shape, 4):
        g = g.float()
        p.grad = g.clone()
        opt.step()
        b = mu * b + g
        o = _ns(torch.sign(g + mu * b))
        v = beta2 * v + (1 - beta2) * o * o
        o_hat = o / (v.sqrt() + eps)
        update = 0.2 * (o_hat.numel() ** 0.5) * o_hat / (o_hat.norm() + eps)
        w = w * (1 - lr * wd) - lr * update
        assert torch.allclose(p.detach(), w, atol=1e-5, rtol=1e-4)


def test_adamuon_update_has_rms_point_two():
    p = torch.nn.Parameter(torch.zeros(16, 8))
    opt = AdaMuon([p], lr=1.0)
    p.grad = torch.randn(16, 8)
    opt.step()
    rms = p.detach().pow(2).mean().sqrt().item()
    assert abs(rms - 0.2) < 1e-4


def test_adamuon_rejects_non_matrices():
    with pytest.raises(ValueError, match="2D parameters"):
        AdaMuon([torch.nn.Parameter(torch.zeros(3))])


@pytest.mark.parametrize("cls,kw", [(Signum, {"lr": -1.0}), (Signum, {"momentum": 1.0}),
                                    (AdaMuon, {"beta2": 1.5}), (AdaMuon, {"weight_decay": -1})])
def test_bases_check_arguments(cls, kw):
    with pytest.raises(ValueError):
        cls([torch.nn.Parameter(torch.zeros(2, 2))], **kw)


@pytest.mark.parametrize("kw", [{}, {"nesterov": False, "weight_decay": 0.05},
                                {"adjust_lr_fn": "match_rms_adamw"}])
@pytest.mark.parametrize("shape", [(6, 4), (3, 8)])
def test_muon_in_bfloat16_is_torch_muon_bit_for_bit(shape, kw):
    from dopr import Muon

    w0 = torch.randn(*shape)
    p, q = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    ours, theirs = Muon([p], lr=0.02, **kw), torch.optim.Muon([q], lr=0.02, **kw)
    for g in _grads(shape, 5, seed=3):
        p.grad, q.grad = g.float(), g.float()
        ours.step()
        theirs.step()
        assert torch.equal(p, q)
    assert torch.equal(ours.state[p]["momentum_buffer"], theirs.state[q]["momentum_buffer"])


def test_muon_in_float32_follows_the_update_rule_more_precisely_than_bfloat16():
    from dopr import Muon

    shape, lr, mu = (8, 5), 0.02, 0.95
    w0 = torch.randn(*shape)
    p32, p16 = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    o32, o16 = Muon([p32], lr=lr, ns_dtype=torch.float32), Muon([p16], lr=lr)
    w, buf = w0.double(), torch.zeros(*shape, dtype=torch.float64)
    for g in _grads(shape, 4, seed=5):
        p32.grad, p16.grad = g.float(), g.float()
        o32.step()
        o16.step()
        buf = mu * buf + (1 - mu) * g
        u = g + mu * (buf - g)  # Nesterov
        a, b, c = 3.4445, -4.7750, 2.0315
        x = u.T / u.norm()  # 8 x 5 is tall: iterate on the wide orientation
        for _ in range(5):
            s = x @ x.T
            x = a * x + (b * s + c * s @ s) @ x
        w = w * (1 - lr * 0.1) - lr * math.sqrt(8 / 5) * x.T  # torch's default weight decay 0.1
    err32, err16 = (p32.double() - w).abs().max(), (p16.double() - w).abs().max()
    assert err32 < 1e-5 and err32 < err16 / 10, (err32, err16)


def test_muon_ns_dtype_is_checked_and_survives_a_checkpoint():
    import io

    from dopr import Muon

    with pytest.raises(ValueError, match="ns_dtype"):
        Muon([torch.nn.Parameter(torch.zeros(2, 2))], ns_dtype="float32")
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = Muon([p], lr=0.02, ns_dtype=torch.float32)
    p.grad = torch.randn(4, 3)
    opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    other = Muon([torch.nn.Parameter(p.detach().clone())], lr=0.02)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.param_groups[0]["ns_dtype"] == torch.float32


def test_muon_auto_ns_dtype_is_the_faster_precision_of_this_hardware():
    from torch import nn

    from dopr import DoPr
    from dopr.bases.muon import Muon, fast_ns_dtype, matmul_probe

    model = nn.Linear(8, 8, bias=False)
    opt = Muon(model.parameters(), lr=1e-2, ns_dtype="auto")
    ms = matmul_probe()
    expected = torch.bfloat16 if ms["bfloat16"] <= ms["float32"] else torch.float32
    assert opt.param_groups[0]["ns_dtype"] == expected == fast_ns_dtype("cpu")
    assert fast_ns_dtype("cuda") == torch.bfloat16
    dopr_opt = DoPr(nn.Linear(8, 8, bias=False), base="muon", lr=1e-2, ns_dtype="auto")
    assert dopr_opt.param_groups[0]["ns_dtype"] == expected
    with pytest.raises(ValueError, match="ns_dtype"):
        Muon(model.parameters(), ns_dtype="fast")
