"""DDP and FSDP2 with 2 gloo processes on CPU give the parameters of 1 process on the combined batch."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from dopr import DoPr

STEPS, BATCH, WORLD = 4, 16, 2


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _data():
    g = torch.Generator().manual_seed(1)
    scales = torch.logspace(1, -1, 5, dtype=torch.float64)
    return [(torch.randn(BATCH, 5, generator=g, dtype=torch.float64) * scales,
             torch.randn(BATCH, 3, generator=g, dtype=torch.float64)) for _ in range(STEPS)]


def _train(model: nn.Module, opt: DoPr, data, rank: int = 0, world: int = 1) -> None:
    share = BATCH // world
    for x, y in data:
        x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


def _worker(rank: int, port: int, mode: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        model = _model()
        solve = "cholesky" if mode.endswith("-cholesky") else "inverse"
        blocks = _blocks(mode)
        if mode.startswith("ddp"):
            wrapped = nn.parallel.DistributedDataParallel(model)
            opt = DoPr(wrapped, base="adamw", lr=1e-2, damping=1e-2, split_factorization="split" in mode,
                       solve=solve, max_block=blocks)
            _train(wrapped, opt, _data(), rank, WORLD)
            params = [p.detach().clone() for p in model.parameters()]
        else:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cpu", (WORLD,))
            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            opt = DoPr(model, base="adamw", lr=1e-2, damping=1e-2, solve=solve, max_block=blocks)
            _train(model, opt, _data(), rank, WORLD)
            params = [p.full_tensor().detach().clone() for p in model.parameters()]
        out[rank] = params
    finally:
        dist.destroy_process_group()


def _blocks(mode: str) -> int | None:
    return 3 if "-blocks" in mode else None  # block-diagonal Sigma: 5, 7 and 6 inputs (+ bias) in 2-3 blocks


def _spawn(worker, *args) -> dict:
    """Run ``worker(rank, port, *args, out)`` on WORLD gloo processes; each rank's result, by rank."""
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(worker, args=(_free_port(), *args, out), nprocs=WORLD, start_method="spawn")
        return dict(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_assign_owners_balances_cost_deterministically() -> None:
    from dopr.distributed import assign_owners

    assert assign_owners([216.0, 512.0, 343.0], 2) == [1, 0, 1]
    assert assign_owners([1.0] * 5, 2) == [0, 1, 0, 1, 0]
    assert assign_owners([8.0, 1.0], 4) == [0, 1]


# "-cholesky": triangular solves with the Cholesky factor instead of the explicit inverse (split: the
# factors themselves are all-reduced; FSDP2: each rank solves its own gradient rows); "-blocks": block-diagonal
# Sigma (max_block=3), its blocks all-reduced, split over the ranks, and applied to sharded rows
@pytest.mark.parametrize("mode", ["ddp", "ddp-split", "fsdp2", "ddp-split-cholesky", "fsdp2-cholesky",
                                  "ddp-split-blocks", "fsdp2-blocks-cholesky"])
def test_two_ranks_equal_one_rank_on_the_combined_batch(mode):
    if not dist.is_available():
        pytest.skip("torch built without distributed")
    model = _model()
    opt = DoPr(model, base="adamw", lr=1e-2, damping=1e-2, max_block=_blocks(mode))
    _train(model, opt, _data())
    if _blocks(mode):
        assert all(g.blocks > 1 for g in opt.preconditioner.groups.values())
    expected = [p.detach() for p in model.parameters()]

    results = _spawn(_worker, mode)
    for rank in range(WORLD):
        for got, want in zip(results[rank], expected):
            assert torch.allclose(got, want, rtol=0, atol=1e-6), (mode, rank, (got - want).abs().max())


class _TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tok, self.mid, self.head = nn.Embedding(12, 6), nn.Linear(6, 6), nn.Linear(6, 12, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mid(self.tok(ids))))


def _tied_train(model: nn.Module, opt: DoPr, rank: int = 0, world: int = 1) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        ids = torch.randint(0, 12, (8, 5), generator=g)
        ids = ids[rank * 8 // world : (rank + 1) * 8 // world]
        opt.zero_grad()
        nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.roll(1, 1).flatten()).backward()
        opt.step()


def _tied_worker(rank: int, port: int, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        model = _TiedLM().double()
        wrapped = nn.parallel.DistributedDataParallel(model)
        _tied_train(wrapped, DoPr(wrapped, lr=1e-2, damping=1e-2), rank, WORLD)
        out[rank] = [p.detach().clone() for p in model.parameters()]
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_rank_with_tied_embeddings():
    # the embedding's share of the tied gradient is summed over ranks and averaged as DDP averages .grad
    model = _TiedLM().double()
    opt = DoPr(model, lr=1e-2, damping=1e-2)
    assert opt.preconditioner.tied == [(["tok"], "head")]
    _tied_train(model, opt)
    results = _spawn(_tied_worker)
    for rank in range(WORLD):
        for got, want in zip(results[rank], model.parameters()):
            assert torch.allclose(got, want.detach(), rtol=0, atol=1e-6), (rank, (got - want).abs().max())


def _attention_model() -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    return nn.Sequential(nn.Linear(5, 8), layer, nn.Linear(8, 3)).double()


def _attention_train(model: nn.Module, opt: DoPr, rank: int = 0, world: int = 1) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        x = torch.randn(8, 4, 5, generator=g, dtype=torch.float64)[rank * 8 // world : (rank + 1) * 8 // world]
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def _attention_worker(rank: int, port: int, out: dict) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        model = _attention_model()
        mesh = init_device_mesh("cpu", (WORLD,))
        fully_shard(model[1], mesh=mesh)  # one block: rank 1's rows of in_proj_weight hold no row of q
        fully_shard(model, mesh=mesh)
        _attention_train(model, DoPr(model, lr=1e-2, damping=1e-2), rank, WORLD)
        out[rank] = [p.full_tensor().detach().clone() for p in model.parameters()]
    finally:
        dist.destroy_process_group()


def test_fsdp2_with_multihead_attention_equals_one_rank():
    """The q/k/v rows of in_proj_weight split across ranks: a rank can hold none of a layer's rows (an empty local
    block, which crashed), and the layer's update is still the one-process update."""
    if not dist.is_available():
        pytest.skip("torch built without distributed")
    model = _attention_model()
    opt = DoPr(model, lr=1e-2, damping=1e-2)
    _attention_train(model, opt)
    results = _spawn(_attention_worker)
    for rank in range(WORLD):
        for got, want in zip(results[rank], model.parameters()):
            assert torch.allclose(got, want.detach(), rtol=0, atol=1e-6), (rank, (got - want).abs().max())
