"""Stacked RNNs (issue 22): num_layers > 1, bidirectional, with dropout between layers.

Layer l >= 1 reads layer l-1's output after the inter-layer dropout, which the fused kernel hides. DoPr switches a
plain stack to its layer-by-layer drop-in (same parameters, state-dict keys and outputs, bitwise on CPU), whose
training forward keeps each layer's input and states. Checked: bitwise equal to torch's fused stack (outputs,
final states and gradients, dropout included), each layer against the float64 reference (which recomputes the
stack as one-layer modules fed with the same inputs), and remove() restores the original class.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dopr import DoPr
from dopr.adapters.recurrent import CapturedGRU, CapturedLSTM, CapturedRNN, capture_recurrent, release_recurrent
from helpers import max_rel_diff, train_fast

KINDS = {"lstm": (nn.LSTM, CapturedLSTM), "gru": (nn.GRU, CapturedGRU), "rnn": (nn.RNN, CapturedRNN)}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_the_layer_by_layer_stack_is_the_fused_one_bitwise(kind, bidirectional, batch_first, with_state):
    plain, captured = KINDS[kind]
    torch.manual_seed(0)
    fused = plain(5, 6, num_layers=3, dropout=0.3, bidirectional=bidirectional, batch_first=batch_first)
    stack = copy.deepcopy(fused)
    assert capture_recurrent(stack) and type(stack) is captured
    assert list(stack.state_dict()) == list(fused.state_dict())
    x = torch.randn(4, 7, 5) if batch_first else torch.randn(7, 4, 5)
    h = torch.randn(3 * (2 if bidirectional else 1), 4, 6)
    state = ((h, torch.randn_like(h)) if kind == "lstm" else h) if with_state else None
    results = []
    for module in (fused, stack):
        torch.manual_seed(1)  # the same dropout masks
        out, final = module(x, state)
        (out.square().sum() + sum(f.sum() for f in (final if kind == "lstm" else (final,)))).backward()
        results.append((out, final, [p.grad.clone() for p in module.parameters()]))
    (out_a, fin_a, g_a), (out_b, fin_b, g_b) = results
    assert torch.equal(out_a, out_b)
    for a, b in zip(fin_a if kind == "lstm" else (fin_a,), fin_b if kind == "lstm" else (fin_b,)):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(g_a, g_b))
    release_recurrent(stack)
    assert type(stack) is plain


def test_an_unbatched_input_runs_as_the_fused_stack():
    torch.manual_seed(0)
    fused = nn.LSTM(5, 6, num_layers=2)
    stack = copy.deepcopy(fused)
    capture_recurrent(stack)
    x = torch.randn(7, 5)
    out_a, (h_a, c_a) = fused(x)
    out_b, (h_b, c_b) = stack(x)
    assert torch.equal(out_a, out_b) and torch.equal(h_a, h_b) and torch.equal(c_a, c_b)


class Stacked(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.rnn = KINDS[kind][0](4, 5, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


class Unrolled(nn.Module):
    """The same stack as one-layer modules: the reference reads each layer's input from its own module call."""

    def __init__(self, stacked: Stacked) -> None:
        super().__init__()
        rnn, plain = stacked.rnn, type(stacked.rnn)
        self.first = plain(4, 5, bidirectional=True, batch_first=True)
        self.second = plain(10, 5, bidirectional=True, batch_first=True)
        with torch.no_grad():
            for layer, module in ((0, self.first), (1, self.second)):
                for name, p in module.named_parameters():
                    p.copy_(getattr(rnn, name.replace("_l0", f"_l{layer}")))
        self.head = copy.deepcopy(stacked.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.second(self.first(x)[0])[0])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_layer_of_a_stack_gets_its_own_inputs_statistics(kind):
    """DoPr on the stack steps exactly as DoPr on the same layers written as one-layer modules (whose inputs the
    one-layer adapter reads at the call, checked against the float64 reference in test_layers)."""
    torch.manual_seed(0)
    stacked = Stacked(kind).double()
    unrolled = Unrolled(stacked).double()
    g = torch.Generator().manual_seed(2)
    batches = [[(torch.randn(3, 6, 4, generator=g, dtype=torch.float64),
                 torch.randn(3, 6, 3, generator=g, dtype=torch.float64))] for _ in range(3)]
    opt = train_fast(stacked, batches, 3)
    train_fast(unrolled, batches, 3)
    assert len(opt.preconditioner.layers) == 9 and not opt.preconditioner.skipped
    assert all(s["missing_statistics"] == 0 for s in opt.stats().values())
    flat = dict(stacked.named_parameters())
    for layer, module in ((0, unrolled.first), (1, unrolled.second)):
        for name, p in module.named_parameters():
            q = flat[f"rnn.{name.replace('_l0', f'_l{layer}')}"]
            assert max_rel_diff(nn.ParameterList([q]), nn.ParameterList([p])) < 1e-12, name
    opt.remove()
    assert type(stacked.rnn) is KINDS[kind][0]


def test_a_stack_is_switched_back_by_remove_and_keeps_its_state_dict():
    model = Stacked("lstm")
    keys = list(model.state_dict())
    opt = DoPr(model, lr=1e-3)
    assert type(model.rnn) is CapturedLSTM and list(model.state_dict()) == keys
    opt.remove()
    assert type(model.rnn) is nn.LSTM
