"""Which forward passes count towards Sigma."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from dopr import ActivationPreconditioner, DoPr
from helpers import mlp


def _sigma_after(model_fn, forwards):
    """Run ``forwards(model)`` then precondition; return each group's inverse."""
    model = model_fn()
    ap = ActivationPreconditioner(model, damping=1e-3)
    forwards(model)
    ap.precondition_()
    return {k: g.factor.tensor.clone() for k, g in ap.groups.items()}


def _train_forward(model, x):
    model(x).pow(2).mean().backward()


X = torch.randn(16, 5)
X_OTHER = torch.randn(16, 5) * 10


def _model():
    torch.manual_seed(0)
    return mlp()


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-6, atol=0), k


@pytest.mark.parametrize("extra", ["no_grad", "inference_mode", "eval"])
def test_forwards_that_cannot_produce_gradients_do_not_count(extra):
    def with_extra(model):
        if extra == "no_grad":
            with torch.no_grad():
                model(X_OTHER)
        elif extra == "inference_mode":
            with torch.inference_mode():
                model(X_OTHER)
        else:
            model.eval()
            model(X_OTHER)
            model.train()
        _train_forward(model, X)

    _assert_same(_sigma_after(_model, lambda m: _train_forward(m, X)), _sigma_after(_model, with_extra))


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_recomputation_counts_once(reentrant):
    class Checkpointed(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = _model()

        def forward(self, x):
            if reentrant:  # reentrant checkpointing needs an input that requires grad
                x = x.detach().requires_grad_(True)
            return checkpoint(self.inner, x, use_reentrant=reentrant)

    def plain(model):
        for x in (X, X_OTHER):  # two micro-batches
            _train_forward(model, x)

    reference = _sigma_after(lambda: Checkpointed(), plain)
    # the same, without checkpointing
    expected = _sigma_after(_model, plain)
    _assert_same({k.removeprefix("inner."): v for k, v in reference.items()}, expected)


def test_zero_grad_between_forward_and_backward_keeps_the_statistics():
    # Lightning's automatic optimization runs: forward, zero_grad, backward, step
    m1, m2 = _model(), _model()
    o1, o2 = DoPr(m1, lr=1e-2), DoPr(m2, lr=1e-2)
    loss = m1(X).pow(2).mean()
    o1.zero_grad()
    loss.backward()
    o1.step()
    _train_forward(m2, X)
    o2.step()
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    assert o1.stats()["0"]["missing_statistics"] == 0


def test_reset_statistics_discards_an_abandoned_step():
    m1, m2 = _model(), _model()
    o1, o2 = DoPr(m1, lr=1e-2), DoPr(m2, lr=1e-2)
    _train_forward(m1, X_OTHER)
    o1.zero_grad()
    o1.preconditioner.reset_statistics()
    _train_forward(m1, X)
    o1.step()
    _train_forward(m2, X)
    o2.step()
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_refresh_every_reuses_the_factor_and_skips_capture_in_between():
    model = _model()
    ap = ActivationPreconditioner(model, damping=1e-3, refresh_every=3)
    inverses = []
    for step in range(6):
        assert ap.capturing == (step % 3 == 0)
        _train_forward(model, torch.randn(16, 5) * (step + 1))
        ap.precondition_()
        inverses.append(ap.groups["0"].factor.tensor.clone())
        model.zero_grad()
    assert torch.equal(inverses[0], inverses[2]) and not torch.equal(inverses[2], inverses[3])
    assert ap.stats()["0"]["refreshes"] == 2


def test_ema_mode_averages_across_steps():
    model = nn.Linear(3, 2, bias=False)
    ap = ActivationPreconditioner(model, damping=0.0, sigma="ema", ema_decay=0.5, absolute_damping=0.0, solve="inverse")
    xs = [torch.randn(10, 3), torch.randn(10, 3) * 3]
    for x in xs:
        model(x).sum().backward()
        ap.precondition_()
    s = [x.T @ x / 10 for x in xs]
    expected = 0.5 * s[0] + 0.5 * s[1]
    assert torch.allclose(ap.groups[""].factor.tensor, torch.linalg.inv(expected), rtol=1e-4)


def test_max_rows_subsamples_and_is_reproducible_by_seed():
    def run(seed):
        model = nn.Linear(4, 2, bias=False)
        ap = ActivationPreconditioner(model, damping=1e-3, max_rows=8, seed=seed)
        torch.manual_seed(0)
        model(torch.randn(100, 4)).sum().backward()
        ap.precondition_()
        return ap.groups[""].factor.tensor

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


@pytest.mark.parametrize(("d_in", "rows", "cap"), [(4, 1024, 1024), (4, 1025, 1024), (300, 1204, 1204),
                                                   (300, 1205, 1204), (300, 3000, 1204)])
def test_auto_max_rows_is_exact_up_to_its_cap_and_caps_there(d_in, rows, cap):
    # "auto" keeps max(4 (d_in + 1), 1024) rows per forward (the bias adds a column to Sigma)
    factors, counts = {}, {}
    for max_rows in (None, "auto"):
        model = nn.Linear(d_in, 2)
        ap = ActivationPreconditioner(model, damping=1e-3, max_rows=max_rows, solve="inverse")
        torch.manual_seed(0)
        model(torch.randn(rows, d_in)).sum().backward()
        counts[max_rows] = ap.groups[""].rows
        ap.precondition_()
        factors[max_rows] = ap.groups[""].factor.tensor
    assert counts == {None: rows, "auto": min(rows, cap)}
    assert torch.equal(factors[None], factors["auto"]) == (rows <= cap)


def test_layers_sharing_an_input_are_grouped_and_checked():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x, same=True):
            return self.a(x) + self.b(x if same else x * 2)

    model = Shared()
    opt = DoPr(model, lr=1e-3)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    assert [g["layers"] for g in opt.stats().values()] == [["a", "b"]]
    opt.zero_grad()
    model(torch.randn(5, 4), same=False).sum().backward()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match="share_inputs=False"):
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # and with sharing off, each layer keeps its own Sigma
    model2 = Shared()
    opt2 = DoPr(model2, lr=1e-3, share_inputs=False)
    model2(torch.randn(5, 4)).sum().backward()
    opt2.step()
    assert len(opt2.stats()) == 2


def test_forwards_of_a_deep_copy_of_the_model_do_not_count():
    def with_copy(model):
        clone = copy.deepcopy(model)  # carries the hooks along
        _train_forward(clone, X_OTHER)
        _train_forward(model, X)

    _assert_same(_sigma_after(_model, lambda m: _train_forward(m, X)), _sigma_after(_model, with_copy))


def test_row_mask_keeps_padding_out_of_sigma():
    # a token-wise model on a padded batch with a mask must take the step of the packed valid tokens
    torch.manual_seed(0)
    padded_model = nn.Sequential(nn.Embedding(7, 5), nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    packed_model = copy.deepcopy(padded_model)
    ids = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 2, 0]])
    mask = ids != 0
    y = torch.randn(2, 5, 3)
    o1, o2 = DoPr(padded_model, lr=1e-2), DoPr(packed_model, lr=1e-2)
    with o1.preconditioner.row_mask(mask):
        out = padded_model(ids)
    ((out - y) ** 2)[mask].sum().backward()
    o1.step()
    ((packed_model(ids[mask]) - y[mask]) ** 2).sum().backward()
    o2.step()
    for a, b in zip(padded_model.parameters(), packed_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_row_mask_of_the_wrong_shape_is_refused():
    model = nn.Sequential(nn.Embedding(7, 5), nn.Linear(5, 3))
    opt = DoPr(model, lr=1e-2)
    ids = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 2, 0]])
    with pytest.raises(ValueError, match=r"row_mask of shape \(2, 3\) does not match"):
        with opt.preconditioner.row_mask(ids[:, :3] != 0):
            model(ids)


def test_padding_changes_the_step_when_not_masked():
    torch.manual_seed(0)
    m1 = nn.Sequential(nn.Embedding(7, 5), nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    m2 = copy.deepcopy(m1)
    ids = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 2, 0]])
    mask, y = ids != 0, torch.randn(2, 5, 3)
    o1, o2 = DoPr(m1, lr=1e-2), DoPr(m2, lr=1e-2)
    with o1.preconditioner.row_mask(mask):
        out1 = m1(ids)
    ((out1 - y) ** 2)[mask].sum().backward()
    ((m2(ids) - y) ** 2)[mask].sum().backward()
    o1.step()
    o2.step()
    assert not torch.allclose(m1[1].weight, m2[1].weight)


def test_an_output_modified_in_place_still_commits_its_rows():
    """Swin-v2's position-bias MLP: Linear on a 4-D buffer, then ReLU(inplace=True) on the Linear's output (a view of
    the product), which detached a hook registered on the output tensor: the layer recorded nothing."""

    class Bias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(2, 8), nn.ReLU(inplace=True), nn.Linear(8, 3, bias=False))
            self.register_buffer("table", torch.randn(1, 7, 7, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.mlp(self.table).sum()

    model = Bias()
    opt = DoPr(model, lr=1e-3)
    model(torch.randn(3)).sum().backward()
    z = torch.cat([model.table.reshape(-1, 2), torch.ones(49, 1)], dim=1).double()
    group = opt.preconditioner.groups["mlp.0"]
    torch.testing.assert_close(group.total.double(), z.T @ z, rtol=1e-6, atol=1e-6)
    opt.step()
    assert all(g["missing_statistics"] == 0 for g in opt.stats().values())


def test_layers_share_a_sigma_only_when_they_read_the_same_tensors():
    """SEW-D's attention: q, k and v read the hidden states, and q and k also read the relative embeddings. Grouped
    at their first shared read, v's Sigma took the embeddings' rows too and the step raised; grouped by the set of
    tensors each read in the first step, q and k share one Sigma and v has its own."""

    class Disentangled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, h: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
            return (self.q(h) * self.k(h) * self.v(h)).sum() + (self.q(rel) * self.k(rel)).sum()

    torch.manual_seed(0)
    model = Disentangled()
    opt = DoPr(model, lr=1e-3)
    for _ in range(2):
        h, rel = torch.randn(6, 4), torch.randn(3, 4)
        opt.zero_grad()
        model(h, rel).backward()
        ones = lambda t: torch.cat([t, torch.ones(t.shape[0], 1)], dim=1).double()  # noqa: E731
        want_qk, want_v = ones(h).T @ ones(h) + ones(rel).T @ ones(rel), ones(h).T @ ones(h)
        opt.step()
    assert sorted(g["layers"] for g in opt.stats().values()) == [["q", "k"], ["v"]]
    ap = opt.preconditioner
    model(h, rel).backward()
    torch.testing.assert_close(ap.groups["q"].total.double(), want_qk, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ap.groups["v"].total.double(), want_v, rtol=1e-6, atol=1e-6)
