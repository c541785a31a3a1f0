"""FSDP2 with the layers of issue 22 equals one process: grouped and depthwise convolutions, an LSTM stack, Hugging
Face Conv1D and (grouped) transposed convolutions.

Two gloo ranks, each parameter sharded on its first dim. A grouped convolution's output channels are split so that
a rank holds rows of several groups (6 channels in 3 groups: ranks hold rows 0-2 and 3-5); each local row is
multiplied by its own group's factor. The LSTM stack runs layer by layer (DoPr's drop-in) on the unsharded weights.
Conv1D and ConvTranspose weights are sharded along their input dimension, which AP mixes: each rank gathers the
layer's gradient and keeps its rows of M.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from test_distributed import WORLD, _spawn


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.grouped = nn.Conv1d(6, 6, 3, padding=1, groups=3)
        self.depthwise = nn.Conv1d(6, 6, 3, padding=1, groups=6)
        self.lstm = nn.LSTM(6, 5, num_layers=2, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.depthwise(torch.tanh(self.grouped(x))))
        return self.head(self.lstm(h.transpose(1, 2))[0])


class _InputSharded(nn.Module):
    """Layers whose stored weight has the input dimension first: HF Conv1D, ConvTranspose1d (grouped too)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        torch.manual_seed(0)
        self.up = nn.ConvTranspose1d(6, 4, 3, stride=2, groups=2)
        self.mix = nn.ConvTranspose1d(4, 6, 3, padding=1)
        self.proj = Conv1D(5, 6)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mix(torch.tanh(self.up(x))))
        return self.head(torch.tanh(self.proj(h.transpose(1, 2).contiguous())))


class _Tied(nn.Module):
    """Input embedding tied to the output head: each rank holds some vocabulary rows of the shared weight."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(6, 4)
        self.tok, self.mid, self.head = nn.Embedding(9, 4), nn.Linear(4, 4), nn.Linear(4, 9, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = (x[:, 0].abs() * 3).long().clamp_max(8)  # tokens from the input, so each rank reads its own
        return self.head(torch.tanh(self.mid(self.tok(ids) + self.proj(x.transpose(1, 2)))))


MODELS = {"grouped-lstm": _Net, "input-sharded": _InputSharded, "tied": _Tied}


def _train(model: nn.Module, opt, rank: int = 0, world: int = 1) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(8, 6, 7, generator=g, dtype=torch.float64) * torch.logspace(1, -1, 6, dtype=torch.float64
                                                                                     ).reshape(1, -1, 1)
        x = x[rank * 8 // world:(rank + 1) * 8 // world]
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def _worker(rank: int, port: int, name: str, out: dict) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from dopr import DoPr

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        model = MODELS[name]().double()
        mesh = init_device_mesh("cpu", (WORLD,))
        fully_shard(model, mesh=mesh)
        _train(model, DoPr(model, lr=1e-2, damping=1e-2), rank, WORLD)
        out[rank] = [p.full_tensor().detach().clone() for p in model.parameters()]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fsdp2_equals_one_rank(name):
    if not dist.is_available():
        pytest.skip("torch built without distributed")
    if name == "input-sharded":
        pytest.importorskip("transformers")
    from dopr import DoPr

    model = MODELS[name]().double()
    opt = DoPr(model, lr=1e-2, damping=1e-2)
    _train(model, opt)
    assert not opt.preconditioner.skipped
    results = _spawn(_worker, name)
    for rank in range(WORLD):
        for (name, want), got in zip(model.named_parameters(), results[rank]):
            assert torch.allclose(got, want.detach(), rtol=0, atol=1e-6), (rank, name, (got - want).abs().max())
