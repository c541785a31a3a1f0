"""torch.compile: DoPr's hooks break the graph once per layer (fullgraph=False works and matches eager); with
fullgraph=True the error carries DoPr's own explanation of what to do."""

import copy
import warnings

import pytest
import torch
from torch import nn

from dopr import DoPr
from helpers import mlp


def _steps(model, opt, forward):
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        opt.zero_grad()
        forward(x).pow(2).mean().backward()
        opt.step()


def test_compiled_model_trains_like_the_eager_one():
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = mlp()
    compiled = copy.deepcopy(eager)
    _steps(eager, DoPr(eager, lr=1e-2), eager)
    _steps(compiled, DoPr(compiled, lr=1e-2), torch.compile(compiled, backend="eager"))
    for p, q in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6)


def test_fullgraph_error_says_what_to_do():
    torch._dynamo.reset()
    model = mlp()
    opt = DoPr(model, lr=1e-2)
    with pytest.raises(Exception, match="DoPr records this layer.s input.*fullgraph=False"):
        _steps(model, opt, torch.compile(model, backend="eager", fullgraph=True))


def _orders_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


@pytest.mark.parametrize("order", ["dopr-then-compile", "compile-then-dopr", "compile-forward-then-dopr",
                                   "other-instance-compiled-first"])
def test_every_build_order_gives_tapped_layers_their_statistics(order):
    """Issue 21's four orders: in the last two, the hooks of the previous design never ran (Dynamo reused a graph
    compiled without them) and DoPr trained as AdamW. A tapped weight changes class, which Dynamo guards on."""
    torch._dynamo.reset()
    model = _orders_model()
    x = torch.randn(16, 5)
    if order == "dopr-then-compile":
        opt = DoPr(model, lr=1e-2)
        f = torch.compile(model, backend="eager")
    elif order == "other-instance-compiled-first":
        other = _orders_model()
        torch.compile(other, backend="eager")(x).sum().backward()
        opt = DoPr(model, lr=1e-2)
        f = torch.compile(model, backend="eager")
    else:
        f = torch.compile(model, backend="eager")
        if order == "compile-forward-then-dopr":
            f(x)
        opt = DoPr(model, lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _steps(model, opt, f)
    assert all(g["missing_statistics"] == 0 and g["refreshes"] == 2 for g in opt.stats().values())


def test_a_compiled_graph_without_the_hooks_is_an_error_not_the_base_optimizer():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(5, 8, 1), nn.Tanh(), nn.Conv1d(8, 3, 1))  # convolutions keep module hooks
    x = torch.randn(4, 5, 6)
    f = torch.compile(model, backend="eager")
    f(x)  # a shape check: Dynamo compiles the model without DoPr's hooks
    opt = DoPr(model, lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    f(x).pow(2).mean().backward()
    with pytest.raises(RuntimeError, match=r"torch\.compile.*torch\.compiler\.reset\(\)"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # nothing was modified
    torch.compiler.reset()  # the fix the error gives
    opt.zero_grad()
    f(x).pow(2).mean().backward()
    opt.step()
    assert all(g["refreshes"] == 1 and g["missing_statistics"] == 0 for g in opt.stats().values())
