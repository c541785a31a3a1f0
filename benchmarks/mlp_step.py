"""Step time of DoPr-AdamW over AdamW on the BC bench's kind of policy: a residual MLP 348 -> 256, 4 residual
blocks, head 17, batch 256, one thread. Arms interleaved, medians of wall and process CPU time.

Run: .venv/bin/python benchmarks/mlp_step.py
"""

from __future__ import annotations

import torch
from interleaved import interleaved_medians, training_step
from torch import nn

from dopr import DoPr


class Residual(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(torch.relu(self.fc1(h)))


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(348, 256), *[Residual(256) for _ in range(4)], nn.ReLU(), nn.Linear(256, 17))


def main(rounds: int = 60, warmup: int = 10) -> None:
    torch.set_num_threads(1)
    x, y = torch.randn(256, 348), torch.randn(256, 17)
    arms = {}
    for label, make in (("adamw", lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3)),
                        ("dopr-adamw exact (default)", lambda m: DoPr(m, lr=1e-3)),
                        ("dopr-adamw solve=cholesky", lambda m: DoPr(m, lr=1e-3, solve="cholesky"))):
        model = mlp()
        arms[label] = (model, make(model))
    med = interleaved_medians({label: training_step(opt, lambda m=model: ((m(x) - y) ** 2).mean())
                               for label, (model, opt) in arms.items()}, rounds, warmup)
    w0, c0 = med["adamw"]
    for label, (w, c) in med.items():
        print(f"{label:<28} wall {w * 1e3:6.2f} ms ({w / w0:.2f}x)  cpu {c * 1e3:6.2f} ms ({c / c0:.2f}x)")


if __name__ == "__main__":
    main()
