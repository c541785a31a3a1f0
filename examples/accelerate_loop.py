"""A plain training loop driven by Hugging Face ``accelerate``: DoPr is built on the model, then prepared.

A residual MLP fits a smooth nonlinear map from 16 to 4 dimensions (synthetic, made here). The loop is the one
``accelerate`` documents: ``accelerator.prepare(model, optimizer, loader, scheduler)``, gradient accumulation
through ``accelerator.accumulate(model)`` and ``accelerator.backward(loss)``, gradient clipping, and bf16
autocast (``--mixed-precision bf16``, the default; CPU autocast works too). DoPr is built on the unwrapped model
*before* ``prepare``, because it hooks the model's layers; the prepared optimizer only wraps ``step`` and
``zero_grad``, and the micro-batches that ``accumulate`` folds into one optimizer step feed one input second
moment. The same script runs under ``accelerate launch`` on several processes.

    .venv/bin/python examples/accelerate_loop.py [--steps 60] [--mixed-precision no]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from dopr import DoPr


def smooth_map(n: int, seed: int, d_in: int = 16, d_out: int = 4) -> TensorDataset:
    """Inputs with very unequal feature scales (what AP undoes) and targets from a fixed random 2-layer tanh net."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-1.5, 1.0, d_in)
    x = torch.randn(n, d_in, generator=g) * scales
    w1 = torch.randn(d_in, 32, generator=torch.Generator().manual_seed(1234)) / scales[:, None] / d_in**0.5
    w2 = torch.randn(32, d_out, generator=torch.Generator().manual_seed(4321)) / 32**0.5
    return TensorDataset(x, torch.tanh(x @ w1) @ w2)


class ResidualMLP(nn.Module):
    def __init__(self, d_in: int = 16, width: int = 64, d_out: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())
                                    for _ in range(depth))
        self.out = nn.Linear(width, d_out)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--damping", type=float, default=0.1)
    parser.add_argument("--accumulate", type=int, default=2, help="micro-batches per optimizer step")
    parser.add_argument("--mixed-precision", default="bf16", choices=["no", "bf16", "fp16"])
    args = parser.parse_args()

    accelerator = Accelerator(gradient_accumulation_steps=args.accumulate, mixed_precision=args.mixed_precision,
                              cpu=not torch.cuda.is_available())
    set_seed(0)
    model = ResidualMLP()
    opt = DoPr(model, base="adamw", lr=args.lr, damping=args.damping, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps)
    train = DataLoader(smooth_map(args.steps * args.accumulate * 32, seed=0), batch_size=32, shuffle=True)
    val_x, val_y = smooth_map(1024, seed=1).tensors
    model, opt, train, sched = accelerator.prepare(model, opt, train, sched)

    model.train()
    micro_losses: list[float] = []
    step = 0
    for x, y in train:
        with accelerator.accumulate(model):
            loss = F.mse_loss(model(x), y)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
        micro_losses.append(loss.item())
        if accelerator.sync_gradients:
            if step % 10 == 0:
                recent = micro_losses[-args.accumulate:]
                accelerator.print(f"step {step:4d}  loss {sum(recent) / len(recent):.4f}")
            step += 1
    model.eval()
    with torch.no_grad(), accelerator.autocast():
        val = F.mse_loss(model(val_x.to(accelerator.device)).float(), val_y.to(accelerator.device)).item()
    refreshes = sorted({s["refreshes"] for s in opt.optimizer.stats().values()})  # opt is the prepared wrapper
    accelerator.print(f"{opt.optimizer!r}: {step} optimizer steps, refreshes per input group {refreshes}")
    accelerator.print(f"final loss {val:.4f}  [validation, mixed precision {args.mixed_precision}]")


if __name__ == "__main__":
    main()
