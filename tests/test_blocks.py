"""Block-diagonal Sigma (``max_block``): the fast path against an independent masked reference."""

import pytest
import torch
from torch import nn

from dopr import ActivationPreconditioner, DoPr
from dopr.functional import apply_blocks, block_second_moment_sum, factorize, pad_blocks_
from helpers import QKV, max_rel_diff, mlp, scaled_batches, train_fast, train_reference, twin


def _mask(dim: int, blocks: int) -> torch.Tensor:
    width = -(-dim // blocks)
    which = torch.arange(dim) // width
    return which[:, None] == which[None, :]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("d,blocks", [(9, 3), (10, 3), (7, 2), (12, 1)])
def test_block_second_moment_is_the_masked_full_one(d, blocks, bias):
    z = torch.randn(13, d, dtype=torch.float64)
    full = torch.cat([z, torch.ones(13, 1, dtype=z.dtype)], 1) if bias else z
    want = full.T @ full
    got = block_second_moment_sum(z, augment_bias=bias, blocks=blocks)
    dim = d + bias
    width = got.shape[-1]
    assert got.shape == (blocks, width, width) and width == -(-dim // blocks)
    dense = torch.block_diag(*got)[:dim, :dim]
    assert torch.allclose(dense, torch.where(_mask(dim, blocks), want, 0), atol=1e-12)
    assert torch.count_nonzero(torch.block_diag(*got)[dim:]) == 0  # the padding stays empty


@pytest.mark.parametrize("cholesky", [True, False])
def test_apply_blocks_is_the_inverse_of_the_damped_block_diagonal(cholesky):
    torch.manual_seed(0)
    dim, blocks, gamma = 11, 3, 0.05
    z = torch.randn(40, dim, dtype=torch.float64) * torch.logspace(0, -2, dim, dtype=torch.float64)
    sigma = block_second_moment_sum(z, augment_bias=False, blocks=blocks) / 40
    trace = pad_blocks_(sigma, dim)
    lam = gamma * trace / dim
    f = factorize(sigma, gamma, cholesky=cholesky, damping=lam.expand(blocks))
    g = torch.randn(4, dim, dtype=torch.float64)
    full = z.T @ z / 40
    want = g @ torch.linalg.inv(torch.where(_mask(dim, blocks), full, 0) + lam * torch.eye(dim, dtype=z.dtype))
    assert torch.allclose(trace, torch.trace(full))
    assert torch.allclose(apply_blocks(g, f.factor, f.kind), want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("solve", ["inverse", "cholesky"])
def test_mlp_with_blocks_matches_the_masked_reference(bias, solve):
    model = mlp(bias=bias).double()
    other = twin(model)
    batches = scaled_batches(sizes=(7, 16))  # two micro-batches: blocks accumulate over gradient accumulation
    opt = train_fast(model, batches, 3, max_block=3, solve=solve)
    train_reference(other, batches, 3, max_block=3)
    assert {g.blocks for g in opt.preconditioner.groups.values()} == {2, 3}
    assert max_rel_diff(model, other) < 1e-9


def test_shared_input_blocks_match_reference():
    model = QKV(d=7).double()
    other = twin(model)
    batches = scaled_batches(d_out=2)
    opt = train_fast(model, batches, 3, base="adamw", lr=1e-2, max_block=3)
    train_reference(other, batches, 3, base="adamw", lr=1e-2, max_block=3)
    assert ["q", "k", "v"] in [g["layers"] for g in opt.stats().values()]
    assert max_rel_diff(model, other) < 1e-8


def test_conv_blocks_match_reference():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 7 * 6, 2)).double()
    other = twin(model)
    g = torch.Generator().manual_seed(3)
    batches = [[(torch.randn(5, 3, 7, 6, generator=g, dtype=torch.float64),
                 torch.randn(5, 2, generator=g, dtype=torch.float64))]]
    opt = train_fast(model, batches, 2, max_block=10)
    train_reference(other, batches, 2, max_block=10)
    assert opt.preconditioner.groups["0"].blocks == 3  # 27 patch inputs + bias
    assert max_rel_diff(model, other) < 1e-9


def test_max_block_at_least_every_width_is_the_full_update():
    batches = scaled_batches()
    a, b = mlp().double(), mlp().double()
    b.load_state_dict(a.state_dict())
    train_fast(a, batches, 3)
    opt = train_fast(b, batches, 3, max_block=8)
    assert {g.blocks for g in opt.preconditioner.groups.values()} == {1}
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_a_blocked_state_does_not_load_into_a_full_preconditioner():
    model = mlp().double()
    opt = train_fast(model, scaled_batches(), 2, max_block=3)
    state = opt.state_dict()
    other = DoPr(mlp().double(), base="sgd", lr=0.05)
    with pytest.raises(ValueError, match="max_block"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="max_block must be"):
        DoPr(mlp(), max_block=0)


def test_failed_blocks_fall_back_to_the_identity():
    model = nn.Linear(6, 2, bias=False)
    ap = ActivationPreconditioner(model, damping=0.0, max_block=4, fallback="identity")
    model(torch.zeros(5, 6)).sum().backward()  # all-zero Sigma and no damping: singular blocks
    before = model.weight.grad.clone()
    with pytest.warns(RuntimeWarning, match="failed"):
        ap.precondition_()
    assert torch.equal(model.weight.grad, before)
    assert ap.stats()[""]["fallbacks"] == 1


def test_auto_solve_judges_a_blocked_sigma_by_its_block_width():
    model = nn.Sequential(nn.Linear(8, 2100), nn.Tanh(), nn.Linear(2100, 16))
    kinds = {}
    for max_block in (None, 1100, 12):
        ap = ActivationPreconditioner(model, max_block=max_block)
        model(torch.randn(1100, 8)).sum().backward()
        ap.precondition_()
        kinds[max_block] = (ap.groups["2"].blocks, ap.groups["2"].factor.kind)
        ap.remove()
    # 2100 inputs into 16 outputs: Cholesky solves for the full Sigma and for blocks of 1050, not for blocks of 13
    assert kinds == {None: (1, "cholesky"), 1100: (2, "cholesky"), 12: (175, "inverse")}
