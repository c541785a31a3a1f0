"""Host-synchronizing ops per optimizer step, counted on CPU (each is a device sync on a GPU).

Counts, inside step(), the aten ops that read a tensor's value on the host (_local_scalar_dense: .item(),
bool(), float(); is_nonzero; nonzero; and ops whose output size depends on values: bincount, unique)
plus Tensor.tolist calls. Run: .venv/bin/python benchmarks/host_syncs.py
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).parent))
from compile_graphs import GPT  # noqa: E402
from mlp_step import mlp as residual_mlp  # noqa: E402

from dopr import DoPr  # noqa: E402

SYNC_OPS = {"_local_scalar_dense", "is_nonzero", "nonzero", "bincount", "unique", "_unique2", "unique_dim"}


class CountSyncs(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def count_step(model: nn.Module, opt: torch.optim.Optimizer, loss_fn) -> Counter[str]:  # noqa: ANN001
    """Host syncs inside one (steady-state) step()."""
    tolist = torch.Tensor.tolist

    def counted_tolist(self: torch.Tensor):  # noqa: ANN202
        calls["tolist"] += 1
        return tolist(self)

    for _ in range(2):  # the second step is the steady state (grouping is found on the first)
        calls: Counter[str] = Counter()
        opt.zero_grad()
        loss_fn(model).backward()
        mode = CountSyncs()
        torch.Tensor.tolist = counted_tolist
        try:
            with mode:
                opt.step()
        finally:
            torch.Tensor.tolist = tolist
    return mode.counts + calls


def models():
    torch.manual_seed(0)
    hidden = [m for _ in range(4) for m in (nn.Linear(256, 256), nn.ReLU())]
    mlp = nn.Sequential(nn.Linear(348, 256), nn.ReLU(), *hidden, nn.Linear(256, 17))
    x, y = torch.randn(256, 348), torch.randn(256, 17)
    yield "MLP 348-256x4-17", mlp, lambda m: (m(x) - y).pow(2).mean()
    yield "residual MLP policy (mlp_step.py)", residual_mlp(), lambda m: (m(x) - y).pow(2).mean()
    gpt = GPT(vocab=64, d=64, layers=4, heads=4)
    ids = torch.randint(0, 64, (8, 32))
    yield "GPT d=64 x4", gpt, lambda m: nn.functional.cross_entropy(m(ids).flatten(0, 1), ids.flatten())


if __name__ == "__main__":
    for name, model, loss_fn in models():
        base = count_step(model, torch.optim.AdamW(model.parameters(), lr=1e-3), loss_fn)
        dopr = DoPr(model, lr=1e-3)
        mine = count_step(model, dopr, loss_fn)
        dopr.remove()
        print(f"{name}: AdamW {sum(base.values())} {dict(base)}; DoPr-AdamW {sum(mine.values())} {dict(mine)}")
