"""Optimizer-state MB of DoPr-AdamW after one step, full and block-diagonal Sigma (benchmarks/overhead.py's count).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/recount_state.py      # from the repository root
"""
import copy
import sys

import torch
from torch.nn import functional as F

from dopr import DoPr

sys.path.insert(0, "benchmarks")
import overhead  # noqa: E402


def gpt_case() -> tuple[torch.nn.Module, object]:
    cfg = overhead.PRESETS["cpu-10m"]
    data = torch.randint(0, cfg["vocab"], (cfg["batch"], cfg["seq"] + 1))
    return overhead.GPT(**cfg), lambda m: F.cross_entropy(m(data[:, :-1]).flatten(0, 1), data[:, 1:].flatten())


def cnn_case() -> tuple[torch.nn.Module, object]:
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    return overhead.cnn(), lambda m: F.cross_entropy(m(x), y)


torch.manual_seed(0)
torch.set_num_threads(1)
for name, case, variants in (("gpt", gpt_case, [{}, {"max_block": 384}]),
                             ("cnn", cnn_case, [{}, {"max_block": 256}, {"max_block": 128}])):
    proto, loss_fn = case()
    for kw in variants:
        model = copy.deepcopy(proto)
        opt = DoPr(model, base="adamw", lr=1e-3, **kw)
        opt.zero_grad()
        loss_fn(model).backward()
        opt.step()
        print(name, kw, f"{overhead.state_bytes(opt) / 2**20:.1f} MB")
