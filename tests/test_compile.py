"""torch.compile: DoPr's hooks break the graph once per layer (fullgraph=False works and matches eager); with
fullgraph=True the error carries DoPr's own explanation of what to do."""

import copy

import pytest
import torch

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
