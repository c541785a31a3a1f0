"""FSDP2 with the layers of issue 22: grouped and depthwise convolutions and an LSTM stack equal one process.

Two gloo ranks, each parameter sharded on its first dim. A grouped convolution's output channels are split so that
a rank holds rows of several groups (6 channels in 3 groups: ranks hold rows 0-2 and 3-5); each local row is
multiplied by its own group's factor. The LSTM stack runs layer by layer (DoPr's drop-in) on the unsharded weights.
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


def _train(model: nn.Module, opt, rank: int = 0, world: int = 1) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(8, 6, 7, generator=g, dtype=torch.float64) * torch.logspace(1, -1, 6, dtype=torch.float64
                                                                                     ).reshape(1, -1, 1)
        x = x[rank * 8 // world:(rank + 1) * 8 // world]
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def _worker(rank: int, port: int, out: dict) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from dopr import DoPr

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        model = _Net().double()
        mesh = init_device_mesh("cpu", (WORLD,))
        fully_shard(model, mesh=mesh)
        _train(model, DoPr(model, lr=1e-2, damping=1e-2), rank, WORLD)
        out[rank] = [p.full_tensor().detach().clone() for p in model.parameters()]
    finally:
        dist.destroy_process_group()


def test_fsdp2_with_grouped_convolutions_and_an_lstm_stack_equals_one_rank():
    if not dist.is_available():
        pytest.skip("torch built without distributed")
    from dopr import DoPr

    model = _Net().double()
    opt = DoPr(model, lr=1e-2, damping=1e-2)
    _train(model, opt)
    assert not opt.preconditioner.skipped and len(opt.preconditioner.layers) == 7
    results = _spawn(_worker)
    for rank in range(WORLD):
        for (name, want), got in zip(model.named_parameters(), results[rank]):
            assert torch.allclose(got, want.detach(), rtol=0, atol=1e-6), (rank, name, (got - want).abs().max())
