"""Each layer adapter against the float64 reference (dopr.reference), on tiny models trained for a few steps."""

import copy

import pytest
import torch
from torch import nn

from dopr import ActivationPreconditioner, DoPr
from helpers import max_rel_diff, train_fast, train_reference


def _data(shape_in, shape_out, n_batches=3, scale=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    d = shape_in[-1] if len(shape_in) == 2 else shape_in[1]
    scales = torch.logspace(1, -1, d, dtype=torch.float64) if scale else torch.ones(d, dtype=torch.float64)
    view = (1, -1) + (1,) * (len(shape_in) - 2) if len(shape_in) > 2 else (1, -1)
    return [[(torch.randn(*shape_in, generator=g, dtype=torch.float64) * scales.reshape(view),
              torch.randn(*shape_out, generator=g, dtype=torch.float64))] for _ in range(n_batches)]


def _check(model, batches, steps=3, tol=1e-9, **kw):
    model = model.double()
    ref = copy.deepcopy(model)
    before = copy.deepcopy(model)
    opt = train_fast(model, batches, steps, **kw)
    train_reference(ref, batches, steps)
    assert max_rel_diff(model, ref) < tol
    assert max_rel_diff(model, before) > 1e-3  # it trained
    return opt


class _Conv1DNet(nn.Module):
    def __init__(self, bias=True):
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.a, self.b = Conv1D(8, 5), Conv1D(3, 8)
        if not bias:
            self.a.bias = None

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def test_hf_conv1d_matches_reference_and_the_equivalent_linear(bias=True):  # Conv1D always has a bias
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    net = _Conv1DNet(bias).double()
    linear = nn.Sequential(nn.Linear(5, 8, bias=bias), nn.Tanh(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        linear[0].weight.copy_(net.a.weight.T)
        linear[2].weight.copy_(net.b.weight.T)
        linear[2].bias.copy_(net.b.bias)
        if bias:
            linear[0].bias.copy_(net.a.bias)
    batches = _data((16, 5), (16, 3))
    opt = _check(net, batches)
    assert set(opt.preconditioner.layers) == {"a", "b"}
    train_fast(linear, batches, 3)
    assert torch.allclose(net.a.weight.T, linear[0].weight, rtol=1e-10, atol=1e-12)
    assert torch.allclose(net.b.weight.T, linear[2].weight, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("conv,shape", [
    (lambda: nn.Conv3d(2, 3, 2, stride=1, padding=1), (2, 2, 3, 4, 3)),
    (lambda: nn.Conv3d(2, 3, (1, 2, 2), stride=(1, 2, 1), dilation=(1, 1, 2), bias=False), (2, 2, 3, 5, 5)),
    (lambda: nn.ConvTranspose1d(3, 2, 3, stride=2, padding=1, output_padding=1), (2, 3, 5)),
    (lambda: nn.ConvTranspose1d(3, 2, 2, dilation=2, bias=False), (2, 3, 4)),
    (lambda: nn.ConvTranspose2d(2, 3, (2, 3), stride=(2, 1), padding=(0, 1)), (2, 2, 3, 3)),
    (lambda: nn.ConvTranspose3d(2, 2, 2, stride=2, padding=1, output_padding=1), (1, 2, 2, 3, 2)),
])
def test_conv3d_and_transposed_convs_match_the_reference(conv, shape):
    torch.manual_seed(0)
    layer = conv()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = layer

        def forward(self, x):
            return self.conv(x).tanh().flatten(1).sum(1, keepdim=True)

    batches = _data(shape, (shape[0], 1))
    opt = _check(Net(), batches, tol=1e-8)
    assert "conv" in opt.preconditioner.layers


@pytest.mark.parametrize("spatial", [1, 2])
def test_transposed_conv_called_with_output_size_matches_the_reference(spatial):
    # output_size sets the output padding per call (a U-Net matching its skip connection): here 1 then 0
    torch.manual_seed(0)
    conv_t = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}[spatial]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = conv_t(3, 2, 3, stride=2, padding=1)

        def forward(self, x):
            size = [2 * n for n in x.shape[2:]]
            a = self.up(x, output_size=size)  # one more row than output_padding=0 gives
            b = self.up(x.flip(-1) * 0.5, size[:-1] + [size[-1] - 1])
            assert a.shape[2:] == torch.Size(size) and b.shape[-1] == size[-1] - 1
            return a.tanh().flatten(1).sum(1, keepdim=True) + b.sin().flatten(1).sum(1, keepdim=True)

    shape = (2, 3, 4) if spatial == 1 else (2, 3, 3, 4)
    opt = _check(Net(), _data(shape, (2, 1)), tol=1e-8)
    assert opt.preconditioner.layer_status("up") == "yes"


def test_transposed_conv_rows_are_the_patches_of_its_weight():
    # the defining property: the output at each position is weight . patch (+ bias)
    torch.manual_seed(0)
    from dopr.adapters.conv import ConvTransposeAdapter

    m = nn.ConvTranspose2d(2, 3, (3, 2), stride=(2, 3), padding=(1, 0), output_padding=(1, 2), dilation=(1, 2))
    x = torch.randn(2, 2, 3, 4)
    z = ConvTransposeAdapter().rows(m, x)
    y = m(x)
    w = m.weight.transpose(0, 1).reshape(3, -1)
    expected = y.permute(0, 2, 3, 1).reshape(-1, 3)
    assert torch.allclose(z @ w.T + m.bias, expected, atol=1e-5)


class _Attention(nn.Module):
    def __init__(self, batch_first, cross=False, kdim=None, vdim=None, bias=True):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.mem = nn.Linear(3, kdim or 6)
        self.val = nn.Linear(3, vdim or 6) if vdim else None
        self.attn = nn.MultiheadAttention(6, 2, batch_first=batch_first, kdim=kdim, vdim=vdim, bias=bias)
        self.head = nn.Linear(6, 2)
        self.cross, self.batch_first = cross, batch_first

    def forward(self, x):  # x: N x L x 4 (batch first)
        h = torch.tanh(self.inp(x))
        if self.cross:
            m = torch.tanh(self.mem(x[..., :3] * 2))
            v = torch.tanh(self.val(x[..., 1:4])) if self.val is not None else m
            q, k, v = h, m, v
        else:
            q = k = v = h
        if not self.batch_first:  # keep which of q, k, v are one tensor
            t = {id(a): a.transpose(0, 1) for a in (q, k, v)}
            q, k, v = t[id(q)], t[id(k)], t[id(v)]
        out, _ = self.attn(q, k, v)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return self.head(out).mean(1)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kind", ["self", "cross", "kdim", "nobias"])
def test_multihead_attention_matches_the_reference(batch_first, kind):
    torch.manual_seed(0)
    kw = {"self": {}, "cross": {"cross": True}, "kdim": {"cross": True, "kdim": 5, "vdim": 4},
          "nobias": {"bias": False}}[kind]
    model = _Attention(batch_first, **kw)
    opt = _check(model, _data((8, 5, 4), (8, 2)))
    groups = {tuple(g.members) for g in opt.preconditioner.groups.values()}
    if kind in ("self", "nobias"):
        assert ("attn:q", "attn:k", "attn:v") in groups  # one input, one Sigma
    elif kind == "cross":
        assert ("attn:k", "attn:v") in groups and ("attn:q",) in groups
    else:
        assert {("attn:q",), ("attn:k",), ("attn:v",)} <= groups
    assert "attn.out_proj" in opt.preconditioner.layers
    assert opt.preconditioner.layer_status("attn.out_proj") == "yes"


def test_captured_attention_computes_what_torch_computes_and_switches_back():
    torch.manual_seed(0)
    model = _Attention(True)
    plain = copy.deepcopy(model)
    x = torch.randn(3, 5, 4)
    opt = DoPr(model, lr=1e-3)
    assert type(model.attn).__name__ == "CapturedMultiheadAttention"
    assert model.state_dict().keys() == plain.state_dict().keys()
    out, ref = model(x), plain(x)
    assert torch.equal(out, ref)
    out.sum().backward()
    ref.sum().backward()
    for p, q in zip(model.parameters(), plain.parameters()):
        assert (p.grad is None) == (q.grad is None)
        assert p.grad is None or torch.allclose(p.grad, q.grad, rtol=1e-6, atol=1e-7)
    opt.remove()
    assert type(model.attn) is nn.MultiheadAttention


@pytest.mark.parametrize("average", [True, False])
def test_captured_attention_returns_torchs_attention_weights(average):
    # the second output is the attention map, as nn.MultiheadAttention's, in training as in eval
    torch.manual_seed(0)
    plain = nn.MultiheadAttention(6, 2, batch_first=True)
    captured = copy.deepcopy(plain)
    opt = DoPr(nn.Sequential(captured), lr=1e-3)
    assert type(captured).__name__ == "CapturedMultiheadAttention"
    q, kv = torch.randn(3, 5, 6), torch.randn(3, 7, 6)
    for training in (True, False):
        plain.train(training)
        captured.train(training)
        (out, weights), (ref, ref_weights) = captured(q, kv, kv, average_attn_weights=average), \
            plain(q, kv, kv, average_attn_weights=average)
        assert torch.allclose(out, ref, atol=1e-6)
        assert weights.shape == ref_weights.shape == ((3, 5, 7) if average else (3, 2, 5, 7))
        assert torch.allclose(weights, ref_weights, atol=1e-6)
        assert captured(q, kv, kv, need_weights=False)[1] is None
    opt.remove()


class _Recurrent(nn.Module):
    def __init__(self, cell, batch_first, bidirectional, bias=True, given_state=False):
        super().__init__()
        self.rnn = cell(3, 4, batch_first=batch_first, bidirectional=bidirectional, bias=bias)
        self.head = nn.Linear(4 * (1 + bidirectional), 2)
        self.batch_first, self.given_state, self.lstm = batch_first, given_state, cell is nn.LSTM
        self.h0 = nn.Linear(3, 4 * (1 + bidirectional))

    def forward(self, x):  # x: N x T x 3
        seq = x if self.batch_first else x.transpose(0, 1)
        hx = None
        if self.given_state:
            h = torch.tanh(self.h0(x[:, 0])).reshape(x.shape[0], -1, 4).transpose(0, 1).contiguous()
            hx = (h, torch.zeros_like(h)) if self.lstm else h
        out, _ = self.rnn(seq, hx)
        out = out if self.batch_first else out.transpose(0, 1)
        return self.head(out).mean(1)


@pytest.mark.parametrize("cell", [nn.RNN, nn.LSTM, nn.GRU])
@pytest.mark.parametrize("batch_first,bidirectional,given_state", [(True, False, False), (False, True, False),
                                                                   (True, True, True), (False, False, True)])
def test_recurrent_layers_match_the_reference(cell, batch_first, bidirectional, given_state):
    torch.manual_seed(0)
    model = _Recurrent(cell, batch_first, bidirectional, given_state=given_state)
    opt = _check(model, _data((6, 5, 3), (6, 2)))
    names = {"rnn:ih_l0", "rnn:hh_l0"} | ({"rnn:ih_l0_reverse", "rnn:hh_l0_reverse"} if bidirectional else set())
    assert names <= set(opt.preconditioner.layers)


def test_recurrent_without_bias_and_unbatched_input():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(3, 4, bias=False)
            self.head = nn.Linear(4, 2)

        def forward(self, x):  # one unbatched sequence: T x 3
            return self.head(self.rnn(x)[0]).mean(0, keepdim=True)

    opt = _check(Net(), _data((7, 3), (1, 2)))
    assert {"rnn:ih_l0", "rnn:hh_l0"} <= set(opt.preconditioner.layers)


def test_rnns_dopr_cannot_run_layer_by_layer_are_named_not_silently_skipped():
    class OwnForward(nn.LSTM):  # DoPr runs plain stacks layer by layer (tests/test_rnn_stacks.py), not subclasses
        def forward(self, x, hx=None):
            return super().forward(x, hx)

    model = nn.Sequential(nn.Linear(3, 3))
    model.rnn = OwnForward(3, 4, num_layers=2)
    with pytest.warns(UserWarning, match="num_layers=2 in a OwnForward, a subclass with a forward of its own"):
        opt = DoPr(model, lr=1e-3)
    assert "rnn.weight_hh_l1" in opt.preconditioner.discovery.uncovered
    with pytest.raises(ValueError, match="0.weight_ih_l0: unsupported: LSTM with proj_size > 0"):
        DoPr(nn.Sequential(nn.LSTM(3, 4, proj_size=2)), lr=1e-3, strict=True)


_SAMPLED_CONVS = [
    (nn.Conv1d(3, 4, 3, stride=2, padding=1), (2, 3, 11)),
    (nn.Conv1d(3, 4, 3, padding="same", dilation=2), (3, 9)),  # unbatched
    (nn.Conv2d(3, 5, 4, stride=4), (2, 3, 21, 21)),  # a patchify stem
    (nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)), (2, 2, 9, 8)),
    (nn.Conv3d(2, 3, 3, stride=(1, 2, 2), padding=1), (2, 2, 5, 6, 6)),
    (nn.ConvTranspose1d(3, 2, 3, stride=2, padding=1, output_padding=1), (2, 3, 7)),
    (nn.ConvTranspose2d(2, 3, 3, stride=2, dilation=2, padding=1), (2, 2, 5, 4)),
    (nn.ConvTranspose3d(2, 2, 2, stride=2), (1, 2, 3, 3, 3)),
    (nn.Conv2d(6, 6, 3, padding=1, groups=3), (2, 6, 5, 5)),  # grouped: rows are groups x n x d
    (nn.ConvTranspose1d(4, 6, 3, stride=2, groups=2), (2, 4, 5)),
]


@pytest.mark.parametrize(("conv", "shape"), _SAMPLED_CONVS, ids=lambda v: type(v).__name__ if isinstance(v, nn.Module)
                         else str(v))
def test_conv_rows_drawn_before_unfolding_are_the_same_rows(conv, shape):
    # a row cap on a convolution draws patch indices first and gathers only those patches: the rows must be
    # exactly those the full unfolding would give at the same indices
    from dopr.adapters import conv as conv_adapters

    adapter = (conv_adapters.ConvTransposeAdapter() if isinstance(conv, nn.modules.conv._ConvTransposeNd)
               else conv_adapters.ConvAdapter())
    x = torch.randn(*shape)
    full = adapter.rows(conv, x)
    n = full.shape[-2] if conv.groups > 1 else full.shape[0]
    assert adapter.row_count(conv, x) == n
    select = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: max(1, n // 3)]
    want = full[:, select] if conv.groups > 1 else full[select]
    assert torch.equal(adapter.selected_rows(conv, x, select), want)


def test_row_capped_conv_sigma_equals_capping_the_full_unfolding(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2))
    x = torch.randn(4, 3, 12, 12)

    def factors():
        ap = ActivationPreconditioner(model, damping=1e-3, max_rows=50, seed=3)
        model.zero_grad()
        model(x).square().sum().backward()
        rows = {name: g.rows for name, g in ap.groups.items()}
        ap.precondition_()
        out = {name: g.factor.tensor.clone() for name, g in ap.groups.items()}
        ap.remove()
        return rows, out

    rows, drawn_first = factors()
    from dopr.adapters.base import Adapter
    from dopr.adapters.conv import ConvAdapter

    monkeypatch.setattr(ConvAdapter, "row_count", Adapter.row_count)  # the generic path: unfold all, then draw
    rows_full, unfolded_first = factors()
    assert rows == rows_full == {"0": 50, "2": 50}
    for name in drawn_first:
        assert torch.equal(drawn_first[name], unfolded_first[name])
