"""MobileBERT's LM head, ``h @ torch.cat([decoder.weight.t(), dense.weight]) + decoder.bias``, with ``decoder.weight``
tied to the word embedding: three layers read where their weights are read.

* ``decoder`` (the tied head) reads the first ``E`` columns of ``h``; its share of the tied weight's gradient is
  separated from the embedding's as for any tied head (``dopr.tied``);
* ``dense.weight`` (``out x in`` = ``(H - E) x V`` as a module) is read as ``h[:, E:] @ W``: its *first* dimension
  is the input, so by the invariance principle its Sigma is that of ``h[:, E:]`` (``H - E`` wide), not a
  ``V``-wide one (``ReadTransposedAdapter``).

Checked against an untied twin written with module calls (``dense`` as a Linear ``(H - E) -> V`` holding
``dense.weight.T``) preconditioned by the float64 reference, whose tied copies get the sum of their updates.
"""

import copy
import io
import warnings

import pytest
import torch
from torch import nn

from dopr import DoPr
from dopr.reference import ReferenceAP

V, E, H = 11, 3, 8


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(V, E)
        self.transform = nn.Linear(E, H)
        self.decoder = nn.Linear(E, V)
        self.dense = nn.Linear(V, H - E, bias=False)
        self.decoder.weight = self.tok.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.transform(self.tok(ids)))
        return h @ torch.cat([self.decoder.weight.t(), self.dense.weight], dim=0) + self.decoder.bias


class Twin(nn.Module):
    """The same map, untied, with module calls only."""

    def __init__(self, head: Head) -> None:
        super().__init__()
        self.tok = copy.deepcopy(head.tok)
        self.transform = copy.deepcopy(head.transform)
        self.decoder = nn.Linear(E, V).double()
        self.dense_t = nn.Linear(H - E, V, bias=False).double()
        with torch.no_grad():
            self.decoder.weight.copy_(head.tok.weight)
            self.decoder.bias.copy_(head.decoder.bias)
            self.dense_t.weight.copy_(head.dense.weight.T)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.transform(self.tok(ids)))
        return self.decoder(h[..., :E]) + self.dense_t(h[..., E:])


def _loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.roll(1, dims=1).flatten())


def _ids(step: int) -> torch.Tensor:
    return torch.randint(0, V, (4, 6), generator=torch.Generator().manual_seed(step))


def test_the_head_matches_the_float64_reference():
    torch.manual_seed(0)
    model = Head().double()
    twin = Twin(model)
    opt = DoPr(model, base="sgd", lr=0.5, damping=1e-2)
    assert not opt.preconditioner.discovery.uncovered
    ref = ReferenceAP(twin, 1e-2)
    for step in range(3):
        opt.zero_grad()
        _loss(model, _ids(step)).backward()
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            opt.step()
        twin.zero_grad()
        _loss(twin, _ids(step)).backward()
        ref.precondition_()
        with torch.no_grad():
            total = twin.tok.weight.grad + twin.decoder.weight.grad  # the tied copies: the sum of their updates
            twin.tok.weight.grad.copy_(total)
            twin.decoder.weight.grad.copy_(total)
            for p in twin.parameters():
                p -= 0.5 * p.grad
    ap = opt.preconditioner
    assert ap.groups[ap.layers["dense"].group].dim == H - E  # Sigma of the input it reads, not V-wide
    assert all(s["missing_statistics"] == 0 for s in opt.stats().values())
    close = dict(rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(model.tok.weight, twin.tok.weight, **close)
    torch.testing.assert_close(model.dense.weight, twin.dense_t.weight.T, **close)
    torch.testing.assert_close(model.decoder.bias, twin.decoder.bias, **close)
    torch.testing.assert_close(model.transform.weight, twin.transform.weight, **close)


def _run(model: Head, opt: DoPr, steps: range) -> None:
    for step in steps:
        opt.zero_grad()
        _loss(model, _ids(step)).backward()
        opt.step()


def test_resume_is_bit_exact():
    torch.manual_seed(0)
    model = Head()
    opt = DoPr(model, lr=1e-2)
    _run(model, opt, range(2))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    assert opt.state_dict()["dopr"]["read_transposed"] == ["dense"]
    _run(model, opt, range(2, 4))
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = Head()
    resumed.load_state_dict(saved["model"])
    opt2 = DoPr(resumed, lr=1e-2)
    opt2.load_state_dict(saved["opt"])  # before any read: the switch comes from the state dict
    assert opt2.preconditioner.groups[opt2.preconditioner.layers["dense"].group].dim == H - E
    _run(resumed, opt2, range(2, 4))
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


class BiasedTransposedRead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(V, H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ torch.cat([self.a.weight])  # a read that does not use the layer's bias


def test_a_transposed_read_of_a_layer_with_a_bias_is_named():
    model = BiasedTransposedRead()
    opt = DoPr(model, lr=1e-3)
    model(torch.randn(2, H)).sum().backward()
    model.a.bias.grad = torch.zeros_like(model.a.bias)
    with pytest.warns(RuntimeWarning, match=r"'a' has a gradient .* read as x @ W \(its first dimension as the "
                                            r"input\), a read that does not use the layer's bias"):
        opt.step()


def test_compiled_equals_eager():
    """Inside a compiled graph the product of the concatenation accumulates into phantoms (dense's as x @ W, which
    switches the layer at the first step); before, W.T's view lost what it held at a graph boundary and the head
    had no statistics under torch.compile."""
    torch.manual_seed(0)
    eager, compiled = Head(), Head()
    compiled.load_state_dict(eager.state_dict())
    opts = [DoPr(eager, lr=1e-2), DoPr(compiled, lr=1e-2)]
    forward = torch.compile(compiled)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for step in range(3):
            for run, opt in zip((eager, forward), opts):
                opt.zero_grad()
                _loss(run, _ids(step)).backward()
                opt.step()
    torch.compiler.reset()
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert all(s["missing_statistics"] == 0 for s in opts[1].stats().values())
