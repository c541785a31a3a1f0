"""The fast DoPr against the slow float64 reference (ReferenceAP + the same base optimizer)."""

import pytest
import torch
from torch import nn

from helpers import QKV, max_rel_diff, mlp, scaled_batches, train_fast, train_reference, twin

torch.set_default_dtype(torch.float32)


def _compare(model, batches, steps=3, tol=1e-9, **kw):
    model = model.double()
    other = twin(model)
    train_fast(model, batches, steps, **kw)
    train_reference(other, batches, steps, **kw)
    err = max_rel_diff(model, other)
    assert err < tol, f"fast vs reference: relative difference {err:.2e}"
    return err


@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_reference(bias):
    _compare(mlp(bias=bias), scaled_batches())


@pytest.mark.parametrize("solve", ["cholesky", "inverse"])
def test_both_solves_match_reference(solve):
    model = mlp().double()
    other = twin(model)
    batches = scaled_batches(sizes=(7, 16))
    opt = train_fast(model, batches, 3, solve=solve)
    train_reference(other, batches, 3)
    assert {g.factor.kind for g in opt.preconditioner.groups.values()} == {solve}
    assert max_rel_diff(model, other) < 1e-9


def test_auto_solve_picks_cholesky_for_groups_with_fewer_outputs_than_inputs_refreshed_every_step():
    from dopr import ActivationPreconditioner

    model = nn.Sequential(nn.Linear(8, 1100), nn.Tanh(), nn.Linear(1100, 16), nn.Tanh(), nn.Linear(16, 1200))
    kinds = {}
    for refresh in (1, 2):
        ap = ActivationPreconditioner(model, refresh_every=refresh)
        model(torch.randn(600, 8)).sum().backward()  # more rows than dim/2: Sigma is formed
        ap.precondition_()
        kinds[refresh] = {name: g.factor.kind for name, g in ap.groups.items()}
        ap.remove()
    # layer 2 reads 1101 inputs (with the bias) into 16 outputs: Cholesky solves; layers 0 and 4 have more outputs
    # than inputs
    assert kinds[1] == {"0": "inverse", "2": "cholesky", "4": "inverse"}
    assert kinds[2] == {"0": "inverse", "2": "inverse", "4": "inverse"}


def test_auto_solve_keeps_cholesky_only_up_to_half_as_many_outputs_as_inputs():
    # benchmarks/solve_crossover.py: from about 0.6 d outputs on the inverse and one product beat two solves
    from dopr import ActivationPreconditioner

    model = nn.Sequential(nn.Linear(40, 63), nn.Tanh(), nn.Linear(63, 32), nn.Tanh(), nn.Linear(32, 24))
    ap = ActivationPreconditioner(model)
    model(torch.randn(600, 40)).sum().backward()
    ap.precondition_()
    # d = inputs + 1 (bias): 41 -> 63 outputs, 64 -> 32 (exactly d/2), 33 -> 24 (0.73 d)
    assert {name: g.factor.kind for name, g in ap.groups.items()} == {"0": "inverse", "2": "cholesky", "4": "inverse"}


@pytest.mark.parametrize("sizes", [(3, 5), (3, 5, 30)])
def test_few_rows_into_a_wide_layer_match_reference(sizes):
    # rows <= dim/2: the Woodbury form from the kept rows; (3, 5, 30): the third micro-batch passes
    # dim/2, so the kept rows are folded into Sigma mid-step
    model = nn.Sequential(nn.Linear(40, 48), nn.Tanh(), nn.Linear(48, 3)).double()
    other = twin(model)
    batches = scaled_batches(d_in=40, sizes=sizes)
    opt = train_fast(model, batches, 3, damping=1e-2)
    train_reference(other, batches, 3, damping=1e-2)
    kinds = {name: g.factor.kind for name, g in opt.preconditioner.groups.items()}
    # once Sigma is formed, the 3 outputs of layer 2 (49 inputs) take Cholesky solves, layer 0's 48 (41) the inverse
    assert kinds == ({"0": "low_rank", "2": "low_rank"} if len(sizes) == 2 else {"0": "inverse", "2": "cholesky"})
    assert max_rel_diff(model, other) < 1e-9


def test_low_rank_form_in_float32_is_as_accurate_as_the_inverse():
    torch.manual_seed(0)
    errors = {}
    for solve in ("auto", "inverse"):
        model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 4))
        other = twin(model.double()).float()
        model, other = model.float(), other.double()
        scales = torch.logspace(1, -2, 64, dtype=torch.float64)
        batches = [[(x * scales, y)] for [(x, y)] in scaled_batches(d_in=64, d_out=4, sizes=(12,))]
        train_fast(model, [[(x.float(), y.float()) for x, y in b] for b in batches], 3, damping=1e-3, solve=solve)
        train_reference(other, batches, 3, damping=1e-3)
        errors[solve] = max_rel_diff(model.double(), other)
    # without its refinement step the Woodbury form was 2.7x less accurate than the inverse here
    assert errors["auto"] < 1.5 * errors["inverse"], errors


def test_gradient_accumulation_matches_reference():
    # micro-batches of different sizes: Sigma must be the mean over all rows of the step
    _compare(mlp(), scaled_batches(sizes=(7, 16, 3)))


def test_shared_input_layers_match_reference():
    model = QKV().double()
    batches = scaled_batches(d_out=2, sizes=(9, 4))
    other = twin(model)
    opt = train_fast(model, batches, 3)
    train_reference(other, batches, 3)
    assert max_rel_diff(model, other) < 1e-9
    groups = [g["layers"] for g in opt.stats().values()]
    assert ["q", "k", "v"] in groups, groups


def test_sequence_inputs_match_reference():
    # Linear on (batch, time, features): every token is a row of Z
    g = torch.Generator().manual_seed(2)
    batches = [[(torch.randn(4, 5, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, 3, generator=g,
                                                                                    dtype=torch.float64))]]
    _compare(mlp(), batches)


@pytest.mark.parametrize(
    "conv",
    [
        lambda: nn.Conv2d(3, 4, 3, padding=1),
        lambda: nn.Conv2d(3, 4, (3, 2), stride=2, dilation=(1, 2), bias=False),
        lambda: nn.Conv2d(3, 4, 3, padding="same"),
    ],
)
def test_conv2d_matches_reference(conv):
    torch.manual_seed(0)
    model = nn.Sequential(conv(), nn.Tanh(), nn.Flatten(), nn.LazyLinear(2))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, 7, 6, generator=g, dtype=torch.float64)
    model = model.double()
    model(x)  # materialise the lazy layer
    batches = [[(x, torch.randn(5, 2, generator=g, dtype=torch.float64))]]
    _compare(model, batches, steps=2)


def test_conv1d_matches_reference():
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1, stride=2), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 5, 2))
    g = torch.Generator().manual_seed(4)
    batches = [[(torch.randn(6, 2, 9, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g,
                                                                                    dtype=torch.float64))]]
    _compare(model, batches, steps=2)


def test_embedding_matches_reference():
    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(11, 4, padding_idx=0)
            self.out = nn.Linear(4, 2)

        def forward(self, ids):
            return self.out(torch.tanh(self.emb(ids)).mean(dim=1))

    g = torch.Generator().manual_seed(5)
    # skewed token frequencies, some tokens never seen
    ids = torch.multinomial(torch.tensor([3.0, 5, 1, 1, 0.5, 0.2, 2, 0, 0, 1, 0.1]), 24 * 3, replacement=True,
                            generator=g).reshape(24, 3)
    batches = [[(ids[:12], torch.randn(12, 2, generator=g, dtype=torch.float64)),
                (ids[12:], torch.randn(12, 2, generator=g, dtype=torch.float64))]]
    _compare(Bag(), batches, steps=3)


@pytest.mark.parametrize("base,kw,tol", [
    ("sgd", {"momentum": 0.9}, 1e-9),
    ("adam", {}, 1e-8),
    ("adamw", {"weight_decay": 0.1}, 1e-8),
    ("signum", {"momentum": 0.9}, 1e-9),
    ("adamuon", {}, 1e-6),
    ("muon", {}, 1e-6),
])
def test_each_base_matches_reference(base, kw, tol):
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    _compare(model, scaled_batches(sizes=(32,)), steps=3, base=base, lr=1e-2, damping=1e-2, tol=tol, **kw)
