"""Fault injection: degenerate statistics, extreme scales, odd models; property tests vs the reference."""

import copy
import io

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from dopr import ActivationPreconditioner, DoPr, NonFiniteError
from helpers import max_rel_diff, mlp, train_fast, train_reference


def _step(model, opt, x, y):
    opt.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    opt.step()


def test_rank_deficient_sigma_constant_features_and_dead_relus():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].bias[:4] = -100.0  # half of the hidden units are dead: zero columns in the next Sigma
    opt = DoPr(model, lr=1e-2, damping=1e-3)
    x = torch.randn(16, 4)
    x[:, 1] = 3.0  # a constant feature
    for _ in range(3):
        _step(model, opt, x, torch.randn(16, 2))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(s["fallbacks"] == 0 for s in opt.stats().values())


def test_a_batch_of_one():
    model = mlp()
    opt = DoPr(model, lr=1e-2)
    _step(model, opt, torch.randn(1, 5), torch.randn(1, 3))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_an_empty_batch_steps_like_the_base_optimizer():
    # no rows: zero gradients and no statistics; DoPr-AdamW must do what AdamW does (decay only)
    model = mlp()
    twin = copy.deepcopy(model)
    opt = DoPr(model, lr=1e-2, weight_decay=0.1)
    plain = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1)
    _step(model, opt, torch.randn(0, 5), torch.randn(0, 3))
    _step(twin, plain, torch.randn(0, 5), torch.randn(0, 3))
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    assert all(s["refreshes"] == 0 for s in opt.stats().values())


def test_an_empty_micro_batch_among_others_is_harmless():
    model, twin = mlp().double(), None
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64)
    empty = (x[:0], y[:0])
    train_fast(model, [[(x, y), empty]], 2, loss_fn=lambda o, t: ((o - t) ** 2).sum())
    train_reference(twin, [[(x, y)]], 2, loss_fn=lambda o, t: ((o - t) ** 2).sum())
    assert max_rel_diff(model, twin) < 1e-9


def test_tiny_activations_with_a_bias_are_fine():
    # the constant bias input keeps tr(Sigma) near 1, so the damped Sigma stays well scaled
    model = nn.Sequential(nn.Linear(4, 3))
    opt = DoPr(model, lr=1e-2, damping=1e-3)
    _step(model, opt, torch.randn(8, 4) * 1e-20, torch.randn(8, 3))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opt.stats()["0"]["fallbacks"] == 0


def test_tiny_activations_fall_back_with_a_warning_and_stay_finite():
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    opt = DoPr(model, lr=1e-2, damping=1e-3, solve="inverse")  # the inverse of Sigma ~ 1e-40 overflows float32
    with pytest.warns(RuntimeWarning, match="Cholesky of Sigma"):
        _step(model, opt, torch.randn(8, 4) * 1e-20, torch.randn(8, 3))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opt.stats()["0"]["fallbacks"] == 1


def test_tiny_activations_need_no_fallback_with_cholesky_solves():
    # the Cholesky factor of Sigma ~ 1e-40 (~1e-20) is a float32 even where the inverse is not; M = G Sigma^-1 is
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    opt = DoPr(model, lr=1e-2, damping=1e-3, solve="cholesky")
    _step(model, opt, torch.randn(8, 4) * 1e-20, torch.randn(8, 3))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opt.stats()["0"]["fallbacks"] == 0 and opt.preconditioner.groups["0"].factor.kind == "cholesky"


def test_huge_activations_raise_a_clear_error():
    model = nn.Sequential(nn.Linear(4, 3))
    opt = DoPr(model, lr=1e-2)
    before = copy.deepcopy(model.state_dict())
    opt.zero_grad()
    model(torch.randn(8, 4) * 1e20).mean().backward()
    with pytest.raises(NonFiniteError, match="overflows float32"):
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_module_used_twice_in_one_forward_matches_the_reference():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Linear(4, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return self.out(torch.tanh(self.shared(torch.tanh(self.shared(x)))))

    model = Twice().double()
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    batches = [[(torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randn(8, 2, generator=g,
                                                                               dtype=torch.float64))]]
    train_fast(model, batches, 3)
    train_reference(twin, batches, 3)
    assert max_rel_diff(model, twin) < 1e-9


# (24 inputs, 3 rows): the first layer keeps its rows for the Woodbury form (9 rows per step <= 25/2),
# the second folds them into Sigma at the second micro-batch (6 rows > 9/2)
@pytest.mark.parametrize("d_in, rows", [(5, 8), (24, 3)])
def test_resume_in_the_middle_of_gradient_accumulation(d_in, rows):
    def make():
        torch.manual_seed(0)
        return mlp(d_in=d_in)

    g = torch.Generator().manual_seed(1)
    micro = [(torch.randn(rows, d_in, generator=g), torch.randn(rows, 3, generator=g)) for _ in range(6)]

    def run(model, opt, batches, start=0):
        for i, (x, y) in enumerate(batches, start):
            ((model(x) - y) ** 2).mean().backward()
            if i % 3 == 2:  # three micro-batches per step
                opt.step()
                opt.zero_grad()

    m = make()
    o = DoPr(m, lr=1e-2)
    run(m, o, micro)

    m1 = make()
    o1 = DoPr(m1, lr=1e-2)
    run(m1, o1, micro[:4])  # stop after the first micro-batch of the second step
    assert bool(o1.preconditioner.groups["0"].kept) == (d_in == 24)
    buf = io.BytesIO()
    torch.save({"model": m1.state_dict(), "opt": o1.state_dict(),
                "grads": [p.grad for p in m1.parameters()]}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    m2 = make()
    o2 = DoPr(m2, lr=1e-2)
    m2.load_state_dict(ckpt["model"])
    o2.load_state_dict(ckpt["opt"])
    for p, grad in zip(m2.parameters(), ckpt["grads"]):
        p.grad = grad
    run(m2, o2, micro[4:], start=4)
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    widths=st.lists(st.integers(1, 7), min_size=1, max_size=3),
    bias=st.booleans(),
    batch=st.integers(1, 9),
    damping=st.sampled_from([1e-3, 0.1, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_property_random_mlps_match_the_reference(widths, bias, batch, damping, seed):
    torch.manual_seed(seed)
    sizes = [3, *widths, 2]
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b, bias=bias), nn.Tanh()]
    model = nn.Sequential(*layers[:-1]).double()
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    batches = [[(torch.randn(batch, 3, generator=g, dtype=torch.float64) * 3,
                 torch.randn(batch, 2, generator=g, dtype=torch.float64))] for _ in range(2)]
    train_fast(model, batches, 2, damping=damping)
    train_reference(twin, batches, 2, damping=damping)
    assert max_rel_diff(model, twin) < 1e-8


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    c_in=st.integers(1, 3), c_out=st.integers(1, 3), k=st.integers(1, 3), stride=st.integers(1, 2),
    pad=st.integers(0, 1), size=st.integers(3, 6), bias=st.booleans(), seed=st.integers(0, 2**16),
)
def test_property_random_convs_match_the_reference(c_in, c_out, k, stride, pad, size, bias, seed):
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, bias=bias)
    out = (size + 2 * pad - k) // stride + 1
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.Linear(c_out * out * out, 2)).double()
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    batches = [[(torch.randn(3, c_in, size, size, generator=g, dtype=torch.float64),
                 torch.randn(3, 2, generator=g, dtype=torch.float64))]]
    train_fast(model, batches, 2, damping=0.1)
    train_reference(twin, batches, 2, damping=0.1)
    assert max_rel_diff(model, twin) < 1e-8


@pytest.mark.parametrize("solve", ["inverse", "cholesky"])
def test_a_failing_group_keeps_its_last_good_factor_while_its_bucket_is_refactorized(solve):
    # two layers of one size share a bucket, whose factorizations alternate between two reused buffers; "b"'s
    # Sigma is all zero from step 2 on (no damping: Cholesky fails), "a" keeps refreshing into those buffers
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3, bias=False), nn.Linear(4, 3, bias=False)

        def forward(self, x, y):
            return self.a(x) + self.b(y)

    torch.manual_seed(0)
    model = Two()
    ap = ActivationPreconditioner(model, damping=1e-3, solve=solve)
    kept = None
    for step in range(4):
        y = torch.randn(16, 4) if step == 0 else torch.zeros(16, 4)
        model(torch.randn(16, 4), y).sum().backward()
        if step == 0:
            ap.precondition_()
            kept = ap.groups["b"].factor.tensor.clone()
        else:
            with pytest.warns(RuntimeWarning, match="keeping the last good factor"):
                ap.precondition_()
        model.zero_grad()
        assert torch.equal(ap.groups["b"].factor.tensor, kept)
    assert ap.stats()["b"]["fallbacks"] == 3 and ap.stats()["a"]["refreshes"] == 4
