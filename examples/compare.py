"""Train the same small model with AdamW and DoPr-AdamW side by side and print both losses.

Inputs are deliberately anisotropic (feature scales from 10 to 0.01), the regime in which the paper
says plain gradient methods learn features unevenly. Same seed, data, initialization and batches
for both arms.

    python examples/compare.py [--steps 600] [--lr 3e-3] [--damping 0.1]
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from dopr import DoPr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--damping", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    d_in, n = 16, 4096
    scales = torch.logspace(1, -2, d_in)
    teacher = nn.Sequential(nn.Linear(d_in, 32), nn.Tanh(), nn.Linear(32, 4))
    x = torch.randn(n, d_in) * scales
    with torch.no_grad():
        y = teacher(x / scales)  # the target depends on every feature equally, whatever its scale
    x_val = torch.randn(1024, d_in) * scales
    with torch.no_grad():
        y_val = teacher(x_val / scales)

    student = nn.Sequential(nn.Linear(d_in, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 4))
    arms = {}
    for name in ("adamw", "dopr-adamw"):
        model = copy.deepcopy(student)
        if name == "adamw":
            opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
        else:
            opt = DoPr(model, base="adamw", lr=args.lr, damping=args.damping)
        arms[name] = (model, opt)

    g = torch.Generator().manual_seed(args.seed)
    print(f"{'step':>6} {'adamw train':>12} {'dopr train':>12} {'adamw val':>12} {'dopr val':>12}")
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, n, (128,), generator=g)
        losses = {}
        for name, (model, opt) in arms.items():
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            losses[name] = loss.item()
        if step % (args.steps // 6) == 0 or step == args.steps:
            with torch.no_grad():
                val = {k: nn.functional.mse_loss(m(x_val), y_val).item() for k, (m, _) in arms.items()}
            print(f"{step:>6} {losses['adamw']:>12.4e} {losses['dopr-adamw']:>12.4e} "
                  f"{val['adamw']:>12.4e} {val['dopr-adamw']:>12.4e}")


if __name__ == "__main__":
    main()
