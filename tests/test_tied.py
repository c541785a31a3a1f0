"""Tied embeddings: one weight read by Embeddings and a Linear head gets the sum of each layer's own AP update.

Checked against an untied twin (each layer with its own copy of the weight, equal values) preconditioned by the
float64 reference layer by layer, whose updates are summed and applied to every copy.
"""

import copy

import pytest
import torch
from torch import nn

from dopr import DoPr
from dopr.reference import ReferenceAP


class TinyLM(nn.Module):
    def __init__(self, second_embedding: bool, head: bool, head_bias: bool = False):
        super().__init__()
        self.tok = nn.Embedding(10, 6)
        self.enc = nn.Embedding(10, 6) if second_embedding else None
        self.mid = nn.Linear(6, 6)
        self.head = nn.Linear(6, 10, bias=head_bias) if head else None
        self.out = None if head else nn.Linear(6, 10)

    def tie(self):
        if self.enc is not None:
            self.enc.weight = self.tok.weight
        if self.head is not None:
            self.head.weight = self.tok.weight
        return self

    def forward(self, ids):
        h = self.tok(ids)
        if self.enc is not None:
            h = h + 0.5 * self.enc(ids.flip(1))
        h = torch.tanh(self.mid(h))
        return (self.head if self.head is not None else self.out)(h)


def _loss(model, ids):
    return nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.roll(1, dims=1).flatten())


@pytest.mark.parametrize("second_embedding,head,head_bias", [(False, True, False), (True, True, True),
                                                              (True, False, False)])
def test_tied_weight_gets_the_sum_of_each_layers_ap_update(second_embedding, head, head_bias):
    torch.manual_seed(0)
    untied = TinyLM(second_embedding, head, head_bias).double()
    with torch.no_grad():
        for m in (untied.enc, untied.head):
            if m is not None:
                m.weight.copy_(untied.tok.weight)
    tied = copy.deepcopy(untied).tie()
    users = [n for n in ("tok", "enc", "head") if getattr(untied, n) is not None]
    opt = DoPr(tied, base="sgd", lr=0.5, damping=1e-2)
    assert not opt.preconditioner.discovery.uncovered
    ref = ReferenceAP(untied, 1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        ids = torch.randint(0, 10, (4, 7), generator=g)
        opt.zero_grad()
        _loss(tied, ids).backward()
        opt.step()
        untied.zero_grad()
        _loss(untied, ids).backward()
        ref.precondition_()
        with torch.no_grad():
            total = sum(getattr(untied, n).weight.grad for n in users)
            for n in users:
                getattr(untied, n).weight.grad.copy_(total)
            for p in untied.parameters():
                p -= 0.5 * p.grad
    assert torch.allclose(tied.tok.weight, untied.tok.weight, rtol=1e-9, atol=1e-12)
    assert torch.allclose(tied.mid.weight, untied.mid.weight, rtol=1e-9, atol=1e-12)
    if head_bias:
        assert torch.allclose(tied.head.bias, untied.head.bias, rtol=1e-9, atol=1e-12)


def test_tied_statistics_follow_the_gradient():
    # a logging forward never backpropagated, and a cleared micro-batch, leave the update unchanged
    def run(extra: bool):
        torch.manual_seed(0)
        model = TinyLM(False, True).tie()
        opt = DoPr(model, lr=1e-2)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            ids = torch.randint(0, 10, (4, 7), generator=g)
            opt.zero_grad()
            if extra:
                model(ids.flip(0)).sum()
                _loss(model, ids[:2]).backward()
                model.zero_grad()
            _loss(model, ids).backward()
            opt.step()
        return model

    a, b = run(False), run(True)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
